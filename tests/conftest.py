import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))  # tests import the checkpoint builder as `checkpoints`
torch.set_num_threads(min(4, os.cpu_count() or 1))
