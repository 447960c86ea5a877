"""How the demo's questions are worded: the trained wordings of each kind of question (shapes.KINDS), the withheld
ones that training never uses, and what conversations.vary adds in training (lead-ins, filler words, casual writing).

Slots: {shape} circle / square / triangle; {color} one of shapes.COLORS; {what} "red shapes" or "circles"; {obj}
"a red square", "a circle" or "a red shape". The "absent" kind asks colour, shape and position questions about
something the image does not hold, in the same wordings. The README's and the CLI's example questions are trained.
"""

# Trained wordings use everyday words for each idea: the picture (image, picture, photo, drawing, scene), a shape
# (shape, object, thing, figure, item, one), asking (what, which, tell me, name, say, give me, let me know,
# can / could you), counting (how many, count, number, total), describing (describe, description, explain, what
# is in), a place (where, position, location, place, part, find, located). Some mix the cues of two kinds ("Do
# you see what color ...", "What can you see in ...", "What shapes do you see?") so that no opening decides the kind.
TRAINED = {
    "colour": [
        "What color is the {shape}?", "What colour is the {shape}?", "Which color is the {shape}?",
        "What is the color of the {shape}?", "What color does the {shape} have?", "Tell me the color of the {shape}.",
        "What color is the {shape} in the image?", "The {shape} is what color?", "What colour is the {shape} here?",
        "What's the color of the {shape}?", "In which color is the {shape} drawn?", "What color has the {shape}?",
        "Please tell me what color the {shape} is.", "Do you know the color of the {shape}?",
        "Name the color of the {shape}.", "Which colour does the {shape} have?", "What is the {shape}'s colour?",
        "Can you tell me what colour the {shape} is?", "Say the color of the {shape}.",
        "Give me the colour of the {shape}.", "What color is the {shape} in the picture?",
        "The {shape} has which color?", "Could you tell me the color of the {shape}?",
        "What kind of color does the {shape} have?", "Do you see what color the {shape} is?",
        "How is the {shape} colored?", "What color do you see on the {shape}?",
        "Which color was used for the {shape}?", "Let me know the color of the {shape}.",
        "What color is the {shape} in this drawing?", "What is the colour of the {shape} in the photo?",
        "Color of the {shape}?"],
    "shape": [
        "What shape is the {color} object?", "Which shape is {color}?", "What is the {color} shape?",
        "What shape is {color}?", "What kind of shape is the {color} one?",
        "Tell me the shape of the {color} object.", "What is the shape of the {color} object?",
        "Which shape is the {color} one?", "What's the {color} shape?", "Which shape is drawn in {color}?",
        "What is the {color} thing?", "Please tell me which shape is {color}.", "Which object is {color}?",
        "What shape does the {color} object have?", "Name the {color} shape.", "What figure is the {color} one?",
        "What type of shape is the {color} one?", "The {color} object is which shape?",
        "The {color} one is what shape?", "Can you tell me what shape the {color} object is?",
        "Which item is {color}?", "What is the {color} item?", "Say which shape is {color}.",
        "Give me the shape of the {color} object.", "Do you know which shape is {color}?",
        "What shape do you see in {color}?", "Which of the shapes is {color}?",
        "What shape is the {color} thing in the image?", "What is the {color} one in the picture?",
        "Could you tell me the shape of the {color} figure?", "What kind of object is colored {color}?",
        "Let me know which shape is {color}."],
    "count": [
        "How many shapes are there?", "How many shapes are in the image?", "How many objects can you see?",
        "How many objects are there?", "Count the shapes.", "How many shapes do you see?",
        "What is the number of shapes?", "How many things are in the picture?", "How many shapes are shown?",
        "How many shapes does the picture show?", "What's the number of objects?", "Please count the objects.",
        "How many shapes can be seen?", "How many objects are in the picture?", "Tell me how many shapes there are.",
        "How many shapes can you count?", "Can you count the shapes in the image?", "How many figures are there?",
        "How many items are in the image?", "Count the figures in the picture.",
        "What is the total number of things?", "Give me the number of shapes.", "Say how many objects there are.",
        "Do you see how many shapes there are?", "How many shapes does the image have?",
        "What number of objects is shown?", "Count all the shapes in the image.",
        "How many things do you see in the drawing?", "How many objects are in this scene?",
        "Can you tell me the number of shapes?", "Let me know how many shapes there are.",
        "How many shapes are in the photo?"],
    "count_of": [
        "How many {what} are there?", "How many {what} are in the image?", "How many {what} can you see?",
        "Count the {what}.", "How many {what} do you see?", "What is the number of {what}?",
        "How many {what} are in the picture?", "How many {what} are shown?", "How many {what} can be seen?",
        "What's the number of {what}?", "Please count the {what}.", "How many {what} are drawn?",
        "Give me the number of {what}.", "Can you count the {what}?", "Tell me how many {what} there are.",
        "How many {what} does the image have?", "How many {what} can you count?",
        "How many {what} are in this drawing?", "How many {what} does the picture show?",
        "Count the {what} in the image.", "Say how many {what} there are.", "Do you see how many {what} there are?",
        "How many {what} are in the scene?", "What is the total number of {what}?",
        "Let me know the number of {what}.", "How many {what} does this photo contain?",
        "Could you tell me how many {what} there are?", "Number of {what} in the picture?",
        "How many {what} are in the photo?", "Which number of {what} do you see?"],
    "position": [
        "Where is the {color} {shape}?", "Where is the {color} {shape} in the image?",
        "Where is the {color} {shape} located?", "Where can I find the {color} {shape}?",
        "What is the position of the {color} {shape}?", "In which part of the image is the {color} {shape}?",
        "Where's the {color} {shape}?", "Tell me where the {color} {shape} is.",
        "Where is the {color} {shape} drawn?", "In what part of the picture is the {color} {shape}?",
        "Find the {color} {shape}.", "Where does the {color} {shape} appear?", "Where is the {color} {shape} placed?",
        "Where do you see the {color} {shape}?", "Can you tell me where the {color} {shape} is?",
        "Where in the picture is the {color} {shape}?", "Which position does the {color} {shape} have?",
        "Give me the location of the {color} {shape}.", "Where can you see the {color} {shape}?",
        "In which place is the {color} {shape}?", "Where in the image can I see the {color} {shape}?",
        "Say where the {color} {shape} is.", "Do you know where the {color} {shape} is?",
        "The {color} {shape} is where?", "Where was the {color} {shape} drawn?",
        "In which part of the drawing is the {color} {shape}?", "Where is the {color} {shape} in this scene?",
        "Could you find the {color} {shape}?", "Let me know where the {color} {shape} is.",
        "Where in the photo is the {color} {shape}?"],
    "description": [
        "Describe the image.", "Describe the image in one sentence.", "What is in the image?", "What is shown here?",
        "What is in this picture?", "What do you see?", "Describe this picture.", "What does the image show?",
        "Tell me what is in the image.", "Describe what you see.", "What does this picture show?",
        "Please describe the image.", "What's in the picture?", "Tell me about the image.",
        "Can you describe the picture?", "What can you see in the image?", "Give me a description of the image.",
        "What is in the photo?", "Explain what is in the picture.", "Describe the scene.", "What is in the drawing?",
        "What do you see in this image?", "Tell me what you see.", "What does the drawing show?",
        "Could you describe the image?", "What is shown in the image?", "Say what is in the picture.",
        "What things are in the image?", "What shapes do you see?", "Which objects are in the picture?",
        "Describe all the shapes.", "Let me know what is in the image."],
    "exists": [
        "Is there {obj}?", "Is there {obj} in the image?", "Do you see {obj}?", "Can you see {obj}?",
        "Is {obj} shown?", "Does the image contain {obj}?", "Is there {obj} in the picture?", "Is there {obj} here?",
        "Is {obj} in the image?", "Do you see {obj} in the picture?", "Can {obj} be seen?",
        "Does the image show {obj}?", "Is {obj} visible?", "Does the picture have {obj}?",
        "Is there {obj} in the drawing?", "Does the picture contain {obj}?", "Can you find {obj}?",
        "Is {obj} drawn in the image?", "Does this scene have {obj}?", "Tell me if there is {obj}.",
        "Is there {obj} in this photo?", "Do you know if there is {obj}?", "Say whether there is {obj}.",
        "Can you tell me if there is {obj}?", "Is there {obj} shown in the image?", "Does the drawing show {obj}?",
        "Is {obj} there?", "Do we see {obj}?"],
}
# Never used in training: each has a word that no trained text, lead-in or filler word has (test_demo checks it):
# other nouns for the picture (illustration, sketch, canvas, artwork, frame), a shape (element, piece, symbol,
# form), the colour (hue, shade, tint); other verbs (tally, enumerate, determine, specify, mention, reveal, depict,
# portray, narrate, pinpoint, notice, detect, observe); other openings ("Quick question:", "Hey,", "I wonder",
# "Any idea") and word orders ("The {shape}: what colour?").
WITHHELD = {
    "colour": [
        "Which hue does the {shape} have?", "What shade is the {shape}?", "What tint does the {shape} have?",
        "Determine the color of the {shape}.", "Specify the {shape}'s color.", "The {shape} is painted which color?",
        "In what shade was the {shape} painted?", "Which color is the {shape} filled with?",
        "Quick question: what color is the {shape}?", "Hey, which colour has the {shape}?",
        "Mention the color of the {shape}.", "I wonder what color the {shape} is.",
        "What colour is the {shape} rendered in?", "The {shape}: what colour?", "Reveal the color of the {shape}.",
        "Any idea which color the {shape} is?"],
    "shape": [
        "What form does the {color} element have?", "Which symbol is {color}?", "What is the {color} piece?",
        "Determine which shape is {color}.", "The {color} element: which shape?", "Which outline is {color}?",
        "Specify the shape of the {color} object.", "Of what sort is the {color} object?",
        "Quick question: which shape is {color}?", "Hey, what's the {color} symbol?",
        "Mention the shape of the {color} item.", "I wonder which shape is {color}.",
        "What does the {color} object look like?", "Which shape appears in {color}?",
        "The {color} figure has which form?", "Any idea what the {color} thing is?"],
    "count": [
        "Tally the shapes.", "What is the quantity of objects?", "Enumerate the objects in the image.",
        "How many elements are in the illustration?", "How many pieces does the sketch contain?",
        "What amount of shapes is there?", "Quick question: how many shapes are there?",
        "Hey, how many objects do you notice?", "I wonder how many shapes there are.",
        "Determine the number of objects.", "How many symbols are drawn on the canvas?",
        "Shapes in the picture: how many?", "The number of objects is what?", "How many shapes exist here?",
        "Any idea how many figures the artwork has?", "Specify how many things there are."],
    "count_of": [
        "Tally the {what}.", "What is the quantity of {what}?", "How many {what} exist?",
        "How many {what} are present?", "Quick question: how many {what} are there?",
        "Hey, how many {what} do you notice?", "I wonder how many {what} there are.",
        "Determine the number of {what}.", "How many {what} are on the canvas?", "As for the {what}: how many?",
        "What amount of {what} is there?", "Enumerate the {what}.", "How many {what} does the illustration contain?",
        "Specify how many {what} there are.", "Any idea how many {what} the sketch has?",
        "The number of {what} is what?"],
    "position": [
        "Whereabouts is the {color} {shape}?", "Pinpoint the {color} {shape}.",
        "In which region is the {color} {shape}?", "In what area does the {color} {shape} sit?",
        "Where is the {color} {shape} situated?", "Quick question: where is the {color} {shape}?",
        "Hey, where's the {color} {shape}?", "I wonder where the {color} {shape} is.",
        "Determine the position of the {color} {shape}.", "Where does the {color} {shape} lie?",
        "Specify the location of the {color} {shape}.", "The {color} {shape} sits where?",
        "In which section of the canvas is the {color} {shape}?", "Where do you notice the {color} {shape}?",
        "Any idea where the {color} {shape} is?", "Where on the sketch is the {color} {shape}?"],
    "description": [
        "Give me a summary of the picture.", "Portray the scene in words.", "What does the illustration contain?",
        "Outline what the picture contains.", "Quick question: what is in the image?",
        "Hey, what do you notice in the picture?", "I wonder what the image shows.", "Narrate what you see.",
        "What is on the canvas?", "Write a caption for this picture.", "Explain the sketch.",
        "What objects appear in the artwork?", "What is depicted here?", "Report what the picture shows.",
        "Any idea what is in the image?", "What's in the frame?"],
    "exists": [
        "Is {obj} present?", "Do you notice {obj}?", "Is there {obj} anywhere?", "Does {obj} exist in the image?",
        "Quick question: is there {obj}?", "Hey, do you see {obj}?", "I wonder if there is {obj}.",
        "Can you detect {obj}?", "Does the illustration feature {obj}?", "Is {obj} on the canvas?",
        "Does the sketch include {obj}?", "Can {obj} be spotted?", "Any idea whether there is {obj}?",
        "Do you observe {obj}?", "Is {obj} depicted?", "Is {obj} anywhere in the artwork?"],
}
LEAD_INS = ["Now,", "Next question:", "Look at the image:", "One more:", "Okay,", "And", "So,", "Also,", "Well,",
            "Then,", "Another question:", "Please,"]  # before a trained wording
# Everyday words from other topics, never in a question: in training one word of a question is sometimes replaced
# by one of these, or one is put before it (conversations.vary), so that a word the model does not know is passed
# over and the colours, shapes and question words decide the answer. The tokenizer never learns them, so they
# reach the model in pieces, as an unknown word of a user does.
FILLERS = """apple banana bread butter cheese coffee cookie honey lemon pepper salad sugar tea tomato river ocean
forest garden meadow valley mountain island desert beach window door table chair pillow blanket kitchen garage
bicycle rocket engine wagon piano violin guitar drum music poem story song dance jacket sweater boots scarf pocket
button basket bottle candle mirror ladder hammer pencil eraser paper envelope ticket stamp coin wallet clock
calendar morning evening tonight yesterday tomorrow weekend summer winter autumn happy sleepy brave gentle quiet
noisy lucky clever funny silly really quickly slowly maybe perhaps honestly simply carefully suddenly truly
friendly tiny huge ancient modern wooden metal plastic soft hard warm cold wet dry early late busy lazy sure very
just still actually basically totally nearly almost often never always again together alone outside inside
upstairs downstairs nearby elephant tiger rabbit turtle parrot dolphin spider horse monkey zebra penguin
teacher doctor farmer pilot sailor baker""".split()


def uncapitalize(text):
    """The first letter in lower case ("What color ..." -> "what color ..."), except for the word "I"."""
    return text if text.split()[0] == "I" else text[0].lower() + text[1:]


def casual(question):
    """A question as it is often typed: lower case, no question mark or full stop at the end."""
    return uncapitalize(question).rstrip("?.")
