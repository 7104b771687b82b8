"""DINO self-distillation pieces: projection head, loss, centring, schedules. Imports no Qt.

Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021
(arXiv:2104.14294). A student network is trained to match, on every other view of the same image,
the output distribution of an exponential-moving-average *teacher* on the two global views. The
teacher output is *centred* (a running mean is subtracted) and *sharpened* (a low softmax
temperature); together they prevent the collapse to one constant output. Used by
:mod:`napari_wsseg.engine.pretrain`.

The head reads only the ViT's class token, so :func:`class_token_embedding` computes the last
block for that token alone (the same result, less arithmetic).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class DINOHead(nn.Module):
    """Projection head: a 3-layer MLP, an L2-normalised bottleneck, a weight-normalised last layer.

    The last layer's weight rows are normalised to unit length on every forward pass (DINO's
    ``norm_last_layer=True``: weight normalisation with the gain fixed at 1).

    Parameters
    ----------
    in_dim : int
        Backbone embedding size.
    out_dim : int
        Size of the output distribution (DINO: 65536; small data sets need far fewer).
    hidden_dim, bottleneck_dim : int
        MLP widths (DINO: 2048 and 256).
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int, bottleneck_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, bottleneck_dim),
        )
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)
        self.last_weight = nn.Parameter(torch.empty(out_dim, bottleneck_dim))
        nn.init.trunc_normal_(self.last_weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self.mlp(x), dim=-1)
        return F.linear(x, F.normalize(self.last_weight, dim=-1))


class DINOLoss:
    """Cross-entropy between the sharpened, centred teacher and the student, over view pairs.

    Parameters
    ----------
    out_dim : int
        Head output size (the centre has this length).
    student_temp, teacher_temp : float
        Softmax temperatures (DINO: 0.1 and 0.04; the low teacher temperature sharpens).
    center_momentum : float
        Momentum of the running centre of the teacher outputs (DINO: 0.9).
    """

    def __init__(
        self, out_dim: int, student_temp: float, teacher_temp: float, center_momentum: float
    ) -> None:
        self.center = torch.zeros(1, out_dim)
        self.student_temp = student_temp
        self.teacher_temp = teacher_temp
        self.center_momentum = center_momentum
        self.last_teacher_entropy = float("nan")

    def __call__(
        self, student_out: torch.Tensor, teacher_out: torch.Tensor, n_views: int
    ) -> torch.Tensor:
        """Mean cross-entropy over all (teacher global view, other student view) pairs.

        Parameters
        ----------
        student_out : (n_views * B, K) tensor
            Student outputs, view-major (all images of view 0, then view 1, ...); views 0 and 1
            are the global views.
        teacher_out : (2 * B, K) tensor
            Teacher outputs of the two global views, view-major.
        n_views : int
            Views per image.
        """
        student = (student_out / self.student_temp).chunk(n_views)
        centred = (teacher_out - self.center.to(teacher_out.device)) / self.teacher_temp
        teacher = F.softmax(centred, dim=-1).detach().chunk(2)
        total, pairs = student_out.new_zeros(()), 0
        for t_view, targets in enumerate(teacher):
            for s_view, logits in enumerate(student):
                if s_view == t_view:
                    continue
                total = total + torch.sum(-targets * F.log_softmax(logits, dim=-1), dim=-1).mean()
                pairs += 1
        with torch.no_grad():  # the loss minus this entropy is KL(teacher || student)
            probs = torch.cat(teacher)
            self.last_teacher_entropy = float(
                -(probs * torch.log(probs.clamp_min(1e-12))).sum(dim=-1).mean()
            )
        return total / pairs

    @torch.no_grad()
    def update_center(self, teacher_out: torch.Tensor) -> None:
        """Move the centre towards the batch mean of the teacher outputs."""
        batch_center = teacher_out.mean(dim=0, keepdim=True).to(self.center.device)
        self.center = self.center * self.center_momentum + batch_center * (1 - self.center_momentum)


def cosine_schedule(start: float, end: float, step: int, total: int, warmup: int = 0) -> float:
    """Linear warm-up to ``start`` over ``warmup`` steps, then a cosine from ``start`` to ``end``.

    The warm-up's first step already has ``start / warmup`` (a step at 0 would be wasted).

    Examples
    --------
    >>> cosine_schedule(1.0, 0.0, 0, 10), cosine_schedule(1.0, 0.0, 10, 10)
    (1.0, 0.0)
    >>> cosine_schedule(1.0, 0.0, 0, 10, warmup=4), cosine_schedule(1.0, 0.0, 3, 10, warmup=4)
    (0.25, 1.0)
    """
    if step < warmup:
        return start * (step + 1) / warmup
    span = max(total - warmup, 1)
    progress = min(max(step - warmup, 0) / span, 1.0)
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``teacher = momentum * teacher + (1 - momentum) * student``, parameter by parameter."""
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.mul_(momentum).add_(s.detach(), alpha=1 - momentum)


def parameter_groups(module: nn.Module) -> list[dict]:
    """Weights get weight decay; biases, norms, tokens and position embeddings not (as DINO)."""
    decay, no_decay = [], []
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        skip = param.ndim <= 1 or name.endswith(".bias") or "token" in name or "pos_embed" in name
        (no_decay if skip else decay).append(param)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def class_token_embedding(vit: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``vit(x)`` of a timm class-token ViT, with the last block computed for the class token only.

    The pooled output is the class token after the last block. That block's attention needs
    keys and values of every token, but its queries, output projection and MLP only of the
    class token: about 10/12 of the last block's products are skipped (of a ViT-T's 12 blocks,
    ~7 % of a pretraining step) and the result is the same up to float rounding. Any other model
    (other pooling, register tokens, another block or attention type) runs ``vit(x)``.

    Parameters
    ----------
    vit : timm VisionTransformer
        Built with ``num_classes=0`` (the pooled class token is its output).
    x : (B, C, H, W) tensor

    Returns
    -------
    (B, D) tensor
    """
    if not _has_plain_class_token(vit):
        return vit(x)
    x = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))
    *blocks, last = vit.blocks
    for block in blocks:
        x = block(x)
    cls = x[:, :1] + last.drop_path1(last.ls1(_class_token_attention(last.attn, last.norm1(x))))
    cls = cls + last.drop_path2(last.ls2(last.mlp(last.norm2(cls))))
    return vit.head(vit.head_drop(vit.fc_norm(vit.norm(cls)[:, 0])))


def _has_plain_class_token(vit: nn.Module) -> bool:
    """True for timm's ViT pooled by its one class token, with plain blocks and attention."""
    from timm.layers import Attention
    from timm.models.vision_transformer import Block, VisionTransformer

    if not isinstance(vit, VisionTransformer) or vit.global_pool != "token":
        return False
    if vit.num_prefix_tokens != 1 or not vit.has_class_token or vit.attn_pool is not None:
        return False
    last = vit.blocks[-1] if len(vit.blocks) else None
    return (
        type(last) is Block
        and type(last.attn) is Attention
        and getattr(last.attn, "gate", None) is None
        and isinstance(vit.head, nn.Identity)
    )


def _class_token_attention(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """timm ``Attention.forward`` for the query of token 0 only: ``(B, 1, D)``."""
    batch, n_tokens, _ = x.shape
    heads, head_dim = attn.num_heads, attn.head_dim
    width = heads * head_dim
    weight, bias = attn.qkv.weight, attn.qkv.bias
    q = F.linear(x[:, :1], weight[:width], None if bias is None else bias[:width])
    kv = F.linear(x, weight[width:], None if bias is None else bias[width:])
    q = attn.q_norm(q.reshape(batch, 1, heads, head_dim).transpose(1, 2))
    k, v = kv.reshape(batch, n_tokens, 2, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    k = attn.k_norm(k)
    dropout = attn.attn_drop.p if attn.training else 0.0
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
    out = out.transpose(1, 2).reshape(batch, 1, width)
    if getattr(attn, "norm", None) is not None:
        out = attn.norm(out)
    return attn.proj_drop(attn.proj(out))
