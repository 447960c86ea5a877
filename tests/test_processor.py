"""minillava.processor against transformers 5.23's AutoProcessor on the same llava-hf style folders.

Text: identical input_ids / attention_mask for varied prompts, Llama-2 and Mistral tokenizers, legacy true
and false. Images: pixel_values within 1e-6 (measured: bit-identical) of transformers' PIL backend, and of
its torchvision backend when torchvision can be imported.
"""
import functools
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor

from minillava.config import LlavaConfig
from minillava.errors import ConfigError, ImageError, PromptError, TokenizerError
from minillava.processor import Processor
from tests.helpers import skip_before_convert_rgb_of_5_23
from tests.helpers.mistakes import photo as small_photo
from tests.helpers.mistakes import raises
from tests.helpers.tokenizer_files import minimal_config, write_processor_files

PROMPTS = [
    "USER: <image>\nWhat is shown in this image? ASSISTANT:",
    "USER: <image>\nWhat’s shown in this image? ASSISTANT: This image shows a red stop sign. USER: Describe the "
    "image in more details. ASSISTANT:",
    "USER: <image>\n<image>\nCompare the two pictures. ASSISTANT:",
    "USER: <image>\nFirst. ASSISTANT: ok USER: <image>\nSecond. ASSISTANT:",
    "USER: Hi ASSISTANT: Hello!</s>USER: <image>\nAnd this? ASSISTANT:",  # text after </s>
    "USER:  ASSISTANT:",  # empty user text, as the template renders it
    "",
    "<image>",
    "<image><image>",
    "USER:<image>What",
    "Hello<image>world",
    "   leading spaces",
    "trailing spaces   ",
    "   ",
    "\n",
    "line one\nline two\n\n\nline five\n",
    "\tTabbed\ttext\r\nwindows line",
    "USER: Qu'est-ce que c'est ? Ça coûte 5 €. ASSISTANT:",
    "USER: 🦙🔥 what are these? 👍🏽 ASSISTANT:",
    "👨‍👩‍👧‍👦 family, 🏳️‍🌈 flag",
    "这是什么？日本語のテキスト。한국어",
    "مرحبا بالعالم",
    "café vs cafe\u0301 (NFC vs NFD)",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \u2028 \x07 \ufeff",
    "<s>literal bos</s> and <unk> and <pad> in text",
    "</s></s>",
    "▁ a literal sentencepiece marker ▁▁",
    "1234567890 3.14159 -42 1e-5",
    "def f(x):\n    return x**2  # comment",
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions. USER: <image>\nDescribe it. ASSISTANT:",
    "word " * 150,
    "USER: <image>\n ASSISTANT: <image> is a token</s>",
]
BATCHES = [
    [0, 6],
    [1, 4, 5],
    [2, 7, 18, 30],
    [11, 12, 13, 14, 19, 20, 21],
    [3, 8, 9, 10],
]
TOKENIZERS = [("llama2", False), ("llama2", True), ("mistral", False), ("mistral", True)]


def photo(h, w, seed=0):
    """A smooth colour pattern plus noise: (h, w, 3) uint8, like a photo for a bicubic filter."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([128 + 100 * np.sin(x / (9 + 7 * c) + c) * np.cos(y / (13 + 5 * c) - c) for c in range(3)], -1)
    return np.clip(base + rng.normal(0, 14, (h, w, 3)), 0, 255).astype(np.uint8)


def with_mode(arr, mode):
    img = Image.fromarray(arr)
    h, w = arr.shape[:2]
    if mode in ("RGBA", "LA"):
        alpha = np.linspace(0, 255, w, dtype=np.float64)[None, :].repeat(h, 0)
        img = img.convert("RGB") if mode == "RGBA" else img.convert("L")
        img.putalpha(Image.fromarray(alpha.astype(np.uint8)))
    elif mode == "P+transparency":
        img = img.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
        img.info["transparency"] = int(np.asarray(img)[0, 0])
    elif mode == "P":
        img = img.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    elif mode != "RGB":
        img = img.convert(mode)
    return img


TRANSPARENT = ("RGBA", "LA", "P+transparency")
IMAGE_CASES = [  # (height, width, mode)
    (480, 640, "RGB"), (334, 500, "RGB"), (500, 333, "RGB"), (900, 150, "RGB"), (120, 1000, "RGB"),
    (336, 336, "RGB"), (80, 100, "RGB"), (1, 1, "RGB"), (300, 400, "RGBA"), (301, 257, "L"), (257, 301, "LA"),
    (240, 320, "P+transparency"), (240, 320, "P"), (200, 260, "CMYK"), (150, 150, "1"),
]


@functools.lru_cache(maxsize=None)
def hf_processor(folder, backend="pil"):
    return AutoProcessor.from_pretrained(folder, backend=backend)


def torchvision_available():
    try:
        import torchvision  # noqa: F401
        return True
    except Exception:  # a CUDA-only wheel next to CPU torch raises RuntimeError, not ImportError
        return False


@pytest.fixture(scope="session")
def folders(tmp_path_factory):
    """(tokenizer, legacy) -> a complete llava-hf style folder (with config.json, as real downloads have)."""
    root = tmp_path_factory.mktemp("processor")
    return {(t, legacy): str(write_processor_files(root / f"{t}-legacy{legacy}", tokenizer=t, legacy=legacy,
                                                   config=True))
            for t, legacy in TOKENIZERS}


@pytest.fixture(scope="session")
def small_image():
    return Image.fromarray(photo(30, 40))


def assert_same_text_inputs(ours, theirs):
    for key in ("input_ids", "attention_mask"):
        assert ours[key].dtype == torch.long
        assert ours[key].tolist() == theirs[key].tolist(), key


# ---- text ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("i", range(len(PROMPTS)))
@pytest.mark.parametrize("tok", TOKENIZERS, ids=lambda t: f"{t[0]}-legacy{t[1]}")
def test_input_ids_match_transformers(folders, small_image, tok, i):
    folder = folders[tok]
    images = [small_image] * PROMPTS[i].count("<image>") or None
    theirs = hf_processor(folder)(text=PROMPTS[i], images=images, return_tensors="pt")
    ours = Processor.from_pretrained(folder)(PROMPTS[i], images)
    assert_same_text_inputs(ours, theirs)


@pytest.mark.parametrize("batch", BATCHES, ids=str)
@pytest.mark.parametrize("tok", TOKENIZERS[::3], ids=lambda t: f"{t[0]}-legacy{t[1]}")
def test_left_padded_batches_match_transformers(folders, small_image, tok, batch):
    folder = folders[tok]
    texts = [PROMPTS[i] for i in batch]
    images = [small_image] * sum(t.count("<image>") for t in texts) or None
    theirs = hf_processor(folder)(text=texts, images=images, padding=True, return_tensors="pt")
    ours = Processor.from_pretrained(folder)(texts, images)
    assert_same_text_inputs(ours, theirs)
    assert ours["attention_mask"][:, -1].all()  # left padding: every prompt ends in the last column
    if images:
        assert torch.equal(ours["pixel_values"], theirs["pixel_values"])


def test_legacy_flag_has_no_effect_on_a_llava_folder(folders):
    # tokenizer.json is used verbatim (a plain TokenizersBackend on a llava folder), so the "▁" (29871) after <image>
    # stays
    ids = [Processor.from_pretrained(folders[("llama2", legacy)]).tokenizer.encode("USER: <image>\nWhat").ids
           for legacy in (False, True)]
    assert ids[0] == ids[1] == [1, 3148, 1001, 29901, 29871, 32000, 29871, 13, 5618]


@pytest.mark.parametrize("variant", ["padding_right", "bos_eos_flags", "strategy_full", "small_28_14", "small_56_7",
                                     "jinja", "mistral_30x30"])
def test_folder_variants_match_transformers(tmp_path, small_image, variant):
    kw = {"padding_right": dict(padding_side="right"), "strategy_full": dict(strategy="full"),
          "small_28_14": dict(image_size=28, patch_size=14), "small_56_7": dict(image_size=56, patch_size=7),
          "jinja": dict(chat_template="jinja"),
          "mistral_30x30": dict(tokenizer="mistral", image_size=30, patch_size=10),
          "bos_eos_flags": {}}[variant]
    folder = write_processor_files(tmp_path, config=True, **kw)
    if variant == "bos_eos_flags":  # ignored by transformers 5.23 on a llava folder: tokenizer.json decides
        cfg = json.loads((folder / "tokenizer_config.json").read_text())
        flags = {"add_bos_token": False, "add_eos_token": True}
        (folder / "tokenizer_config.json").write_text(json.dumps({**cfg, **flags}))
    texts = [PROMPTS[2], PROMPTS[7], PROMPTS[17]]
    images = [small_image, Image.fromarray(photo(50, 20, seed=1)), small_image]
    theirs = AutoProcessor.from_pretrained(folder, backend="pil")(text=texts, images=images, padding=True,
                                                                  return_tensors="pt")
    ours = Processor.from_pretrained(folder)
    out = ours(texts, images)
    assert_same_text_inputs(out, theirs)
    assert torch.equal(out["pixel_values"], theirs["pixel_values"])
    n = (out["input_ids"][1] == ours.image_token_id).sum().item()
    assert n == ours.num_image_tokens(*out["pixel_values"].shape[-2:])
    row = out["input_ids"][0][out["attention_mask"][0].bool()]
    assert row[0] == ours.bos_token_id and row[-1] != ours.eos_token_id


def test_attributes(folders):
    p = Processor.from_pretrained(folders[("llama2", False)])
    assert (p.image_token_id, p.pad_token_id, p.bos_token_id, p.eos_token_id) == (32000, 32001, 1, 2)
    assert p.special_tokens == {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
    assert p.num_image_tokens(336, 336) == 576 and p.padding_side == "left" and p.backend == "pil"
    assert p.chat_template.startswith("{% for message in messages %}")
    assert p.tokenizer.token_to_id("<pad>") == 32001


def test_text_only_and_images_only(folders, small_image):
    p = Processor.from_pretrained(folders[("llama2", False)])
    assert set(p("Hello")) == {"input_ids", "attention_mask"}
    assert p(images=[small_image])["pixel_values"].shape == (1, 3, 336, 336)
    nested = p(["<image> a", "<image><image> b"], [[small_image], [small_image, small_image]])
    assert nested["pixel_values"].shape == (3, 3, 336, 336)


# ---- files -----------------------------------------------------------------------------------------------

def test_chat_template_lookup_order(tmp_path):
    folder = write_processor_files(tmp_path, chat_template="tokenizer_config", config=True)
    assert Processor.from_pretrained(folder).chat_template.startswith("{% for message")
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": "from json"}))
    assert Processor.from_pretrained(folder).chat_template == "from json"
    (folder / "chat_template.jinja").write_text("from jinja")
    assert Processor.from_pretrained(folder).chat_template == "from jinja"
    for name in ("chat_template.jinja", "chat_template.json", "tokenizer_config.json"):
        (folder / name).unlink()
    assert Processor.from_pretrained(folder).chat_template is None


def test_folder_saved_by_transformers(tmp_path, small_image):
    # transformers 5 saves processor_config.json with the image settings nested, no preprocessor_config.json
    src = write_processor_files(tmp_path / "src", config=True)
    saved = tmp_path / "saved"
    AutoProcessor.from_pretrained(src, backend="pil").save_pretrained(saved)
    shutil.copy(src / "config.json", saved / "config.json")
    assert not (saved / "preprocessor_config.json").exists()
    texts = [PROMPTS[4], PROMPTS[19]]
    theirs = AutoProcessor.from_pretrained(saved, backend="pil")(text=texts, images=[small_image], padding=True,
                                                                 return_tensors="pt")
    ours = Processor.from_pretrained(saved)(texts, [small_image])
    assert_same_text_inputs(ours, theirs)
    assert torch.equal(ours["pixel_values"], theirs["pixel_values"])
    assert Processor.from_pretrained(saved).chat_template == Processor.from_pretrained(src).chat_template


def test_missing_processor_config_falls_back_to_model_config(tmp_path, folders, small_image):
    folder = write_processor_files(tmp_path, processor_config=False, config=True)
    ours = Processor.from_pretrained(folder)(PROMPTS[3], [small_image] * 2)
    theirs = hf_processor(folders[("llama2", False)])(text=PROMPTS[3], images=[small_image] * 2, return_tensors="pt")
    assert_same_text_inputs(ours, theirs)
    assert Processor.from_pretrained(folder, config=LlavaConfig.from_json(folder)).num_image_tokens(336, 336) == 576
    (folder / "config.json").unlink()  # then nothing says how many tokens an image is: refused, as transformers fails
    with pytest.raises(ConfigError, match="processor_config.json: patch_size = None.*no config.json"):
        Processor.from_pretrained(folder)


# ---- decode ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("skip", [False, True])
def test_decode_matches_transformers(folders, small_image, skip):
    folder = folders[("llama2", False)]
    ours, theirs = Processor.from_pretrained(folder), hf_processor(folder)
    for prompt in PROMPTS[:5] + PROMPTS[17:27]:
        images = [small_image] * prompt.count("<image>") or None
        ids = ours(prompt, images)["input_ids"][0]
        assert ours.decode(ids, skip_special_tokens=skip) == theirs.decode(ids, skip_special_tokens=skip)
    batch = ours([PROMPTS[0], PROMPTS[6]], [small_image])["input_ids"]  # with pad tokens
    assert ours.batch_decode(batch, skip) == theirs.batch_decode(batch, skip_special_tokens=skip)


def test_decode_byte_fallback_round_trip(folders):
    p = Processor.from_pretrained(folders[("llama2", False)])
    text = "Llamas 🦙 and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢!"
    ids = p(text)["input_ids"][0].tolist()
    assert p.decode(ids, skip_special_tokens=True) == text
    assert p.decode(ids) == "<s> " + text  # Llama's decoder keeps the space of "▁Llamas" after a special token
    # The emoji is 4 byte-fallback tokens <0xF0><0x9F><0xA6><0x99>: a prefix of them decodes to U+FFFD, so a
    # streamer must decode the growing sequence; the full sequence decodes the same however it was produced.
    emoji = p.tokenizer.encode("🦙", add_special_tokens=False).ids[-4:]
    assert [p.tokenizer.id_to_token(i) for i in emoji] == ["<0xF0>", "<0x9F>", "<0xA6>", "<0x99>"]
    assert "\ufffd" in p.decode(emoji[:2]) and p.decode(emoji) == "🦙"
    assert p.decode(torch.tensor(ids[:3] + ids[3:])) == p.decode(ids) and p.decode(ids[1]) == "L"


# ---- images ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("h, w, mode", IMAGE_CASES, ids=[f"{h}x{w}-{m}" for h, w, m in IMAGE_CASES])
def test_pixel_values_match_transformers_pil(folders, h, w, mode):
    if mode in TRANSPARENT:
        skip_before_convert_rgb_of_5_23()
    folder = folders[("llama2", False)]
    image = with_mode(photo(h, w, seed=h + w), mode)
    theirs = hf_processor(folder).image_processor(image, return_tensors="pt")["pixel_values"]
    ours = Processor.from_pretrained(folder).preprocess([image], backend="pil")
    assert ours.dtype == torch.float32 and ours.shape == theirs.shape == (1, 3, 336, 336)
    assert (ours - theirs).abs().max().item() <= 1e-6


@pytest.mark.parametrize("h, w, mode", IMAGE_CASES[:9] + IMAGE_CASES[11:12],
                         ids=[f"{h}x{w}-{m}" for h, w, m in IMAGE_CASES[:9] + IMAGE_CASES[11:12]])
def test_pixel_values_match_transformers_torchvision(folders, h, w, mode):
    if not torchvision_available():
        pytest.skip("torchvision cannot be imported here, so transformers' torchvision image backend cannot run; "
                    "the torch backend is still checked against the PIL backend below")
    if mode in TRANSPARENT:
        skip_before_convert_rgb_of_5_23()
    folder = folders[("llama2", False)]
    image = with_mode(photo(h, w, seed=h + w), mode)
    theirs = hf_processor(folder, "torchvision").image_processor(image, return_tensors="pt")["pixel_values"]
    ours = Processor.from_pretrained(folder, backend="torch").preprocess([image])
    assert (ours - theirs).abs().max().item() <= 1e-6


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_numpy_arrays(folders, channels):
    if channels != 3:
        skip_before_convert_rgb_of_5_23()
    folder = folders[("llama2", False)]
    arr = photo(90, 120, seed=channels)
    arr = np.concatenate([arr, np.linspace(0, 255, 120, dtype=np.uint8)[None, :, None].repeat(90, 0)], -1)
    arr = np.ascontiguousarray(arr[..., :channels] if channels != 1 else arr[..., :1])
    backends = [("pil", "pil")] + [("torch", "torchvision")] * torchvision_available()
    for ours_backend, hf_backend in backends:
        theirs = hf_processor(folder, hf_backend).image_processor(arr, return_tensors="pt")["pixel_values"]
        ours = Processor.from_pretrained(folder).preprocess([arr], backend=ours_backend)
        assert (ours - theirs).abs().max().item() <= 1e-6, ours_backend


def test_torch_backend_close_to_pil(folders):
    # Runs without torchvision: the torch backend differs from PIL by at most a few uint8 levels
    # and only by float rounding when no resize is needed.
    p = Processor.from_pretrained(folders[("llama2", False)])
    images = [Image.fromarray(photo(h, w, seed=h)) for h, w in [(480, 640), (333, 500), (336, 336)]]
    pil, tch = p.preprocess(images, backend="pil"), p.preprocess(images, backend="torch")
    diff = (pil - tch).abs()
    assert diff[:2].max() < 3 / 255 / 0.26 and diff[:2].mean() < 1e-3
    assert (pil[2] - tch[2]).abs().max() < 1e-5  # same uint8 pixels; rescale+normalize round differently


def test_paths_match_transformers(folders, tmp_path):
    # transformers opens a path with load_image: EXIF rotation, then convert("RGB") (alpha dropped, no white)
    folder = folders[("llama2", False)]
    rgba = with_mode(photo(200, 300, seed=3), "RGBA")
    rgba.save(tmp_path / "rgba.png")
    Image.fromarray(photo(240, 180, seed=4)).save(tmp_path / "photo.jpg", quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90
    Image.fromarray(photo(120, 200, seed=5)).save(tmp_path / "rotated.jpg", exif=exif)
    frames = [Image.fromarray(photo(64, 80, seed=s)) for s in (6, 7)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    files = [str(tmp_path / n) for n in ("rgba.png", "photo.jpg", "rotated.jpg", "anim.gif")]
    theirs = hf_processor(folder).image_processor(files, return_tensors="pt")["pixel_values"]
    p = Processor.from_pretrained(folder)
    ours = p.preprocess(files)
    assert (ours - theirs).abs().max().item() <= 1e-6
    assert torch.equal(p.preprocess([tmp_path / "anim.gif"]), p.preprocess([Image.open(tmp_path / "anim.gif")]))


@pytest.mark.parametrize("backend", ["pil", "torch"])
def test_do_pad_matches_llava_image_processor(tmp_path, backend):
    if backend == "torch" and not torchvision_available():
        pytest.skip("torchvision cannot be imported here (transformers' LlavaImageProcessor needs it)")
    folder = write_processor_files(tmp_path, config=True)
    cfg = json.loads((folder / "preprocessor_config.json").read_text())
    cfg.update(image_processor_type="LlavaImageProcessor", do_pad=True)
    (folder / "preprocessor_config.json").write_text(json.dumps(cfg))
    images = [Image.fromarray(photo(200, 320, seed=8)), Image.fromarray(photo(301, 90, seed=9))]
    hf = AutoProcessor.from_pretrained(folder, backend="pil" if backend == "pil" else "torchvision")
    assert type(hf.image_processor).__name__.startswith("LlavaImageProcessor")
    theirs = hf.image_processor(images, return_tensors="pt")["pixel_values"]
    ours = Processor.from_pretrained(folder, backend=backend)
    assert ours.image_config["pad_to_square"] and not ours.image_config["pad_batch"]
    assert (ours.preprocess(images) - theirs).abs().max().item() <= 1e-6
    # the pad colour is int(255 * image_mean) = (122, 116, 104); images[0] is wide, so row 0 is padding
    mean, std = np.array(ours.image_config["image_mean"]), np.array(ours.image_config["image_std"])
    expected = torch.tensor((np.array([122, 116, 104]) / 255 - mean) / std, dtype=torch.float32)
    assert torch.allclose(ours.preprocess([images[0]])[0, :, 0, 0], expected, atol=1e-6)
    assert not Processor.from_pretrained(folder, pad_to_square=False).image_config["pad_to_square"]


@pytest.mark.parametrize("backend", ["pil", "torch"])
@pytest.mark.parametrize("change", [dict(size={"shortest_edge": 25}), dict(do_resize=False)],
                         ids=["size25", "no_resize"])
def test_crop_larger_than_image_matches_transformers(tmp_path, backend, change):
    # center crop zero-pads an image smaller than the crop; PIL and torchvision put the odd pixel differently
    if backend == "torch" and not torchvision_available():
        pytest.skip("torchvision cannot be imported here, so transformers' torchvision image backend cannot run")
    folder = write_processor_files(tmp_path, image_size=28, config=True)
    cfg = json.loads((folder / "preprocessor_config.json").read_text())
    (folder / "preprocessor_config.json").write_text(json.dumps({**cfg, **change}))
    images = [Image.fromarray(photo(h, w, seed=h)) for h, w in [(21, 40), (40, 23), (20, 25)]]
    hf = AutoProcessor.from_pretrained(folder, backend="pil" if backend == "pil" else "torchvision")
    theirs = torch.stack([hf.image_processor(im, return_tensors="pt")["pixel_values"][0] for im in images])
    ours = Processor.from_pretrained(folder, backend=backend).preprocess(images)
    assert ours.shape == (3, 3, 28, 28) and (ours - theirs).abs().max().item() <= 1e-6


# ---- errors ----------------------------------------------------------------------------------------------

def test_image_count_mismatch(folders, small_image):
    p = Processor.from_pretrained(folders[("llama2", False)])
    with pytest.raises(PromptError, match=r"2 <image> marker.*1 image"):
        p("<image> and <image>", [small_image])
    with pytest.raises(PromptError, match=r"0 <image> marker.*1 image"):
        p(["no marker", "none here"], [small_image])
    with pytest.raises(PromptError, match=r"1 <image> marker.*0 image"):
        p("<image>")


def test_unpadded_batch_of_different_lengths(folders):
    with pytest.raises(PromptError, match="padding=True"):
        Processor.from_pretrained(folders[("llama2", False)])(["a", "a b c"], padding=False)


def test_unreadable_images(folders, tmp_path, monkeypatch, small_image):
    p = Processor.from_pretrained(folders[("llama2", False)])
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "garbage.jpg").write_bytes(b"not an image at all" * 10)
    Image.fromarray(photo(100, 100)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    cases = [(tmp_path / "missing.png", "not found"), (tmp_path / "empty.png", "cannot be read"),
             (tmp_path / "garbage.jpg", "cannot be read"), (tmp_path / "truncated.png", "cannot be read")]
    for path, why in cases:
        with pytest.raises(ImageError, match=why) as e:
            p.preprocess([small_image, str(path)])
        assert "image 1" in str(e.value) and path.name in str(e.value)
    with pytest.raises(ImageError, match="image 0.*empty image"):
        p.preprocess([Image.new("RGB", (0, 5))])
    with pytest.raises(ImageError, match="image 0.*float64"):
        p.preprocess([np.zeros((10, 10, 3))])
    with pytest.raises(ImageError, match="image 0.*int"):
        p.preprocess([42])
    with pytest.raises(ImageError, match="image 0.*truncated.png"):  # a lazily opened PIL image fails on decode
        p.preprocess([Image.open(tmp_path / "truncated.png")])
    # PIL's decompression-bomb guard stays on and becomes an ImageError
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageError, match="image 0.*full.png.*too many pixels"):
        p.preprocess([tmp_path / "full.png"])


def test_tokenizer_errors(tmp_path):
    folder = write_processor_files(tmp_path / "a", config=True)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(TokenizerError, match="tokenizer.json.*not found"):
        Processor.from_pretrained(folder)
    (folder / "tokenizer.json").write_text('{"version": "1.0", "model": ')
    with pytest.raises(TokenizerError, match="tokenizer.json.*not a valid"):
        Processor.from_pretrained(folder)

    folder = write_processor_files(tmp_path / "b", config=True)
    tok = json.loads((folder / "tokenizer.json").read_text())
    tok["added_tokens"] = [t for t in tok["added_tokens"] if t["content"] != "<image>"]
    (folder / "tokenizer.json").write_text(json.dumps(tok))
    cfg = json.loads((folder / "tokenizer_config.json").read_text())  # declared there, it would be added back
    del cfg["added_tokens_decoder"]["32000"]
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(TokenizerError, match="tokenizer.json.*no '<image>' token"):
        Processor.from_pretrained(folder)

    folder = write_processor_files(tmp_path / "c", config={**minimal_config(), "image_token_index": 32001})
    with pytest.raises(TokenizerError, match="'<image>' is id 32000.*image_token_index is 32001"):
        Processor.from_pretrained(folder)
    folder = write_processor_files(tmp_path / "d", image_token_index=32001, config=True)  # consistent: fine
    assert Processor.from_pretrained(folder).image_token_id == 32001

    with pytest.raises(TokenizerError, match="not a folder"):
        Processor.from_pretrained(tmp_path / "nowhere")


# ---- user mistakes --------------------------------------------------------------------------------------


def test_image_markers_and_images_must_agree(tiny_processor):
    raises(PromptError, "2 <image> marker", "1 image",
           call=lambda: tiny_processor("<image><image> hi", [small_photo()]))
    raises(PromptError, "0 <image> marker", "1 image", call=lambda: tiny_processor("hi", [small_photo()]))
    raises(PromptError, "1 <image> marker", "0 image", call=lambda: tiny_processor("<image> hi"))
    raises(PromptError, "text", call=lambda: tiny_processor([]))
    raises(PromptError, "text", call=lambda: tiny_processor(["a", 3]))
