"""The speed layer: speed-ups over the plain Hugging Face recipe, each recorded (`eff_speed_*`) and switchable off,
none changing what a config means (model, 4-bit training, LoRA, effective batch, beams, lengths, evaluation
cadence, early stopping). `speed: off` in a YAML (or `speed: {enabled: false}`) never imports this package:
tests/test_speed_absent.py runs a trial with it made unimportable.

Where the time goes (BENCHMARKS.md, "Profile"): at real size most of a trial is dev-set evaluation, i.e. beam
search through a 4-bit QLoRA model in small batches of the config's `per_device_eval_batch_size`; every decoding
step dequantizes each 4-bit weight and runs the LoRA branch as extra small matmuls. Training steps are
launch-bound too (a larger micro-batch costs little more time per step).

One module per job:
- plan.py, records.py: the decisions, made once into a frozen SpeedPlan (`decide`), and the TrainingArguments
  they add (tf32); the fast evaluation's own frozen EvalRecord.
- batches.py (`micro_batch`): every split of the effective batch down to the configured micro-batch, largest
  first, and the step down after an OOM.
- memory.py (`memory_gib`): the per-process GPU memory cap under which a too-large micro-batch raises OOM here
  instead of on a 24 GB card.
- attention.py (`no_cudnn_attention`): SDPA without cuDNN, whose per-shape setup took most of each step's CPU
  time on an H100.
- merged.py, generation.py, evaluate.py (`fast_eval`): each evaluation generates from a merged half-precision
  copy of the model (4-bit base dequantized, LoRA and trained token rows merged, checked against the training
  model's logits first), dev rows longest first in batches sized from free GPU memory, put back in file order;
  beam search with the family's cache (seq2seq: the cross-attention keys/values, equal across a dialogue's beams,
  are not reordered); the no-repeat n-gram ban as tensor ops. Returns its own EvalRecord (eff_speed_eval_*).
- losses.py (`chunked_loss`, OFF by default: measured, it did not lower the mT5 peaks it was for): the
  cross-entropy in fp32 chunks of rows.

The hooks the recipe (trainables.trial.recipe) calls, and only where the config turns speed on:
- `decide(exp, configured_batch, cuda, packed_cap_gib)` -> SpeedPlan; `plan.first_micro_batch`: the micro-batch
  the trial starts with;
- `next_micro_batch(plan, current)`: after an OOM, the next split (None: the recipe's own halving);
- `apply_memory_cap(plan)`: once, before the model is loaded;
- `training_arguments(plan)`, `attention_backends(plan)`: extra TrainingArguments, the context around training;
- `trainer_cross_entropy(plan)`: the summed cross-entropy of the recipe's token-mean loss (None: its plain one);
- `evaluate(trainer, plan, family, dataset, prefix)` -> (metrics, EvalRecord): the trainer's evaluation.

What `speed: off` keeps, and why it is not part of this layer: the recipe's correctness fixes. (1) The token-mean
loss (recipe.token_mean_loss as the Trainer's compute_loss_func, with the Trainer no longer handing
num_items_in_batch to the model): with transformers 5 and gradient accumulation, T5/mT5/BART's own loss gave k
times too large gradients (FIELD-NOTES, tests/test_accumulation.py), and the OOM back-off changes the split
mid-trial. (2) Dev batches in file order (compat.evaluate_in_file_order): with group_by_length the Trainer would
length-group them and predictions would not line up with the dev summaries ROUGE compares them with. Everything
else off is the family's own Trainer: its evaluate, its generate, its batches, torch's attention kernels.
"""

from trainables.trial.speed.attention import attention_backends, sdpa_without_cudnn
from trainables.trial.speed.batches import batch_candidates, next_micro_batch
from trainables.trial.speed.evaluate import evaluate
from trainables.trial.speed.losses import trainer_cross_entropy
from trainables.trial.speed.memory import apply_memory_cap
from trainables.trial.speed.plan import decide, training_arguments
from trainables.trial.speed.records import EvalRecord, SpeedPlan

__all__ = ["EvalRecord", "SpeedPlan", "apply_memory_cap", "attention_backends", "batch_candidates", "decide",
           "evaluate", "next_micro_batch", "sdpa_without_cudnn", "trainer_cross_entropy", "training_arguments"]
