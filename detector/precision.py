"""Mixed precision: which dtype each step runs in, and the box arithmetic that never leaves float32.

`amp` (a configuration field) is one of:
  off   float32 everywhere
  bf16  bfloat16 autocast on CUDA and on the CPU (the CPU reproduces the GPU's dtype flow)
  fp16  float16 autocast with a gradient scaler

Under autocast the convolutions and matrix products run in the reduced dtype. torchvision would
then also decode boxes in it: `BoxCoder.decode_single` casts the anchors/proposals to the dtype of
the regression outputs, and `AnchorGenerator` builds anchors in the feature maps' dtype. bfloat16
has 8 significant bits: 2 px steps for coordinates in [256, 512), 4 px in [512, 1024), 8 px above,
larger than the objects this tool is for. `keep_boxes_in_float32` makes every model that
`detector.model.build_model` returns cast the RPN head's and the box predictor's outputs to float32
and build its anchors in float32, so decoding, clipping, NMS, the losses and post-processing run in
float32 whatever autocast is active, including a user's own `torch.autocast` around the model.
"""
import contextlib
from typing import List, Tuple

import torch
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator

from detector.config import AMP_MODES, ConfigError

_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}
assert set(_DTYPES) == set(AMP_MODES)


def amp_dtype(mode: str, device: torch.device | None = None) -> torch.dtype | None:
    """The autocast dtype of an `amp` mode (None = float32, no autocast) on `device`.

    Raises ConfigError for bf16 on a GPU without bfloat16 (before Ampere: T4, V100), naming the
    device and the modes that work there."""
    dtype = _DTYPES[mode]
    if dtype == torch.bfloat16 and device is not None and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"amp: 'bf16' needs a GPU with bfloat16 (Ampere or later), but "
                          f"{torch.cuda.get_device_name(device)} has none: use amp: fp16 or off")
    return dtype


def autocast(device: torch.device, dtype: torch.dtype | None):
    """The autocast context for `dtype` on `device` (a no-op context for float32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


class Float32AnchorGenerator(AnchorGenerator):
    """torchvision's AnchorGenerator, but the anchors are float32 whatever the feature maps' dtype.

    torchvision converts its cell anchors to the feature maps' dtype (bfloat16 under autocast) and
    adds the integer grid shifts to them, so every anchor is rounded to bfloat16's steps; the one
    change here keeps them float32."""

    def set_cell_anchors(self, dtype: torch.dtype, device: torch.device):
        # torchvision's body with float32 for `dtype` (written out, not super(): TorchScript).
        self.cell_anchors = [cell_anchor.to(dtype=torch.float32, device=device) for cell_anchor in self.cell_anchors]


# Forward hooks, typed for TorchScript (torch.jit.script of the model keeps working):
def _rpn_head_float32(module: nn.Module, inputs: Tuple[List[Tensor]],
                      output: Tuple[List[Tensor], List[Tensor]]) -> Tuple[List[Tensor], List[Tensor]]:
    """RPNHead -> (objectness per level (N, A, H, W), box deltas per level (N, 4A, H, W)) in float32."""
    return [o.float() for o in output[0]], [d.float() for d in output[1]]


def _box_predictor_float32(module: nn.Module, inputs: Tuple[Tensor],
                           output: Tuple[Tensor, Tensor]) -> Tuple[Tensor, Tensor]:
    """FastRCNNPredictor -> (class logits (R, C), box deltas (R, 4C)) in float32."""
    return output[0].float(), output[1].float()


def keep_boxes_in_float32(model) -> None:
    """Make a torchvision FasterRCNN decode, clip, suppress and score its boxes in float32 under any
    autocast: the RPN head's (objectness, deltas) and the box predictor's (class logits, box deltas)
    are cast to float32 as they leave those layers (forward hooks: the modules and their state-dict
    keys stay torchvision's), and the anchor generator must be a `Float32AnchorGenerator`.

    A box predictor replaced after this call (fine-tuning code that swaps `roi_heads.box_predictor`)
    needs the call again."""
    if not isinstance(model.rpn.anchor_generator, Float32AnchorGenerator):
        raise TypeError("keep_boxes_in_float32: the model's anchor generator must be a Float32AnchorGenerator "
                        f"(got {type(model.rpn.anchor_generator).__name__})")
    for module, hook in ((model.rpn.head, _rpn_head_float32), (model.roi_heads.box_predictor, _box_predictor_float32)):
        if not any(h is hook for h in module._forward_hooks.values()):
            module.register_forward_hook(hook)
