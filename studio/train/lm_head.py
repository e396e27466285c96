"""The SFT and KTO losses' last layer on a CPU: each label's log-probability, in whole-vocabulary rows.

TRL's SFT and KTO trainers score every position through a fused LM head that never holds the whole
[tokens, vocabulary] logits: on GPUs a Triton kernel folds each vocabulary tile into running
statistics. Without Triton (a CPU), the same tiles go through about a dozen fp32 passes forward,
as many backward, and an fp32 matrix product for the gradient: 1.2 s of a 3.9 s step of the default
model on a 2-core CPU (profiled). Here the head runs in chunks of tokens, each over the whole
vocabulary: forward one matrix product and one log-softmax; backward one product, one softmax and
one product again (the logits are recomputed, never kept; a chunk's size is set in train/memory.py).
Only positions that have a label are scored (the prompt's are not).

The outputs are what those trainers read from TRL's head: each label's log-probability (the loss),
and for their logged metrics the entropy of each next-token distribution, whether the label was the
most likely token and (KTO) each position's mean logit. Models whose logits TRL scales or soft-caps, a head with a bias, MoE
router losses and sharded weights keep TRL's head, as does every other device. Knows nothing about
recipes or the UI; `install` takes the output class from the trainer's library.
"""

from __future__ import annotations

import types

import torch

from studio.train.memory import lm_head_chunk_tokens as chunk_tokens

_SCALE_FIELDS = (
    "final_logit_softcapping",
    "logit_scale",
    "output_multiplier",
    "lm_head_multiplier",
    "logits_scaling",
)


class _LabelLogProbs(torch.autograd.Function):
    """(log p(label), entropy, label is top-1, mean logit or None) of `hidden @ weight.T`, in chunks
    of tokens."""

    @staticmethod
    def forward(ctx, hidden, weight, labels, dtype: torch.dtype, with_mean: bool):
        chunk = chunk_tokens(weight.shape[0])
        w = weight.to(dtype)
        log_probs, entropy, top1, mean = [], [], [], []
        with torch.autocast(hidden.device.type, enabled=False):  # casts chosen here, metrics in fp32
            for start in range(0, max(len(hidden), 1), chunk):  # one empty chunk when nothing is labelled
                h, y = hidden[start : start + chunk].to(dtype), labels[start : start + chunk]
                logits = h @ w.t()
                if with_mean:
                    mean.append(logits.sum(-1, dtype=torch.float32) / logits.shape[-1])
                logp = torch.log_softmax(logits, -1, dtype=torch.float32)
                log_probs.append(logp.gather(1, y[:, None]).squeeze(1))
                entropy.append(-torch.linalg.vecdot(logp.exp(), logp))
                top1.append(logp.argmax(-1) == y)  # the first maximum, as argmax over the logits
        metrics = [torch.cat(entropy), torch.cat(top1), *([torch.cat(mean)] if with_mean else [])]
        ctx.save_for_backward(hidden, weight, labels)
        ctx.dtype = dtype
        ctx.mark_non_differentiable(*metrics)
        return torch.cat(log_probs), *metrics, *([] if with_mean else [None])

    @staticmethod
    def backward(ctx, grad, *_):
        hidden, weight, labels = ctx.saved_tensors
        need_hidden, need_weight = ctx.needs_input_grad[:2]
        chunk = chunk_tokens(weight.shape[0])
        w = weight.to(ctx.dtype)
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = (
            torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight else None
        )
        for start in range(0, max(len(hidden), 1), chunk):
            h, y = hidden[start : start + chunk].to(ctx.dtype), labels[start : start + chunk]
            g = grad[start : start + chunk].float()
            # d log p(y) / d logits = onehot(y) - softmax, times the incoming gradient of each row
            d = torch.softmax(h @ w.t(), -1, dtype=torch.float32).mul_(-g[:, None])
            d[torch.arange(len(y), device=d.device), y] += g
            d = d.to(ctx.dtype)
            if need_hidden:
                grad_hidden[start : start + chunk] = d @ w
            if need_weight:
                grad_weight += (d.t() @ h).float()
        return grad_hidden, None if grad_weight is None else grad_weight.to(weight.dtype), None, None, None


def label_log_probs(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, mean_logits: bool = False
):
    """For `hidden` [n, h] and `labels` [n]: (log-probabilities [n], entropy [n], top-1 [n] bool,
    each row's mean logit [n] when `mean_logits`, else None). Runs in autocast's dtype when
    autocast is on, as the model's own head would."""
    device = hidden.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
    return _LabelLogProbs.apply(hidden, weight, labels, dtype, mean_logits)


def supported(model) -> bool:
    """Whether this head computes what TRL's would for `model` (a transformers causal LM)."""
    config = model.config.get_text_config()
    head = model.get_output_embeddings()
    return (
        head is not None
        and getattr(head, "bias", None) is None
        and head.weight.device.type == "cpu"
        and type(head.weight.data) is torch.Tensor  # not sharded (a DTensor)
        and all(getattr(config, name, None) is None for name in _SCALE_FIELDS)
        and not getattr(config, "output_router_logits", False)
    )


def install(model, output_class, mean_logits: bool = False) -> bool:
    """Serve `model(..., fused_lm_head=True)` (the call TRL's SFT and KTO trainers make after
    patching `model.forward`) with this head; other calls go to the forward already there. Returns
    whether it was installed. `output_class` is the trainer library's output type for that call;
    `mean_logits` adds each position's mean logit (KTO's logged metrics)."""
    if not supported(model):
        return False
    previous = model.forward

    def forward(
        self, *args, fused_lm_head=False, labels=None, shift_labels=None, num_items_in_batch=None, **kwargs
    ):
        if not fused_lm_head:
            return previous(
                *args,
                labels=labels,
                shift_labels=shift_labels,
                num_items_in_batch=num_items_in_batch,
                **kwargs,
            )
        kwargs["use_cache"] = False
        hidden = self.base_model(*args, **kwargs).last_hidden_state
        if shift_labels is None:
            hidden, labels = hidden[:, :-1], labels[:, 1:]
        else:
            labels = shift_labels
        mask = labels != -100
        weight = self.get_output_embeddings().weight
        scored = label_log_probs(hidden[mask], weight, labels[mask], mean_logits)
        log_probs, entropy, top1, mean = (
            None if x is None else x.new_zeros(mask.shape).masked_scatter(mask, x) for x in scored
        )
        count = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        return output_class(
            loss=-log_probs.sum() / count,
            log_probs=log_probs,
            entropy=entropy,
            is_top1=top1,
            mean_logits=mean,
            label_mask=mask,
        )

    model.forward = types.MethodType(forward, model)
    return True
