"""Score refinements side by side after testing (the same table as `eval.py postprocess=[...]`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import lightning as L

from fashionseg.core.memory import keep_freed_memory
from fashionseg.evaluation.refinements import module_refinements, refinement_tables
from fashionseg.postprocess.registry import load_refinements, refinement_names

log = logging.getLogger(__name__)


class RefinementReport(L.Callback):
    """At test end: every refinement of ``methods`` on the test split's probabilities.

    The report lands in ``module.refinement_report`` (train.py writes it to results.json), each method's
    mIoU, Boundary IoU and ms per image in the loggers (``test_refined/<method>/miou``; a joint network's
    ``test_refined/<task>/<method>/miou``), the table in the log.
    """

    def __init__(self, methods: Sequence[str] | None = None, batch_size: int = 8, params: dict | None = None):
        self.methods = list(methods) if methods is not None else refinement_names(trained=False)  # every one
        self.batch_size, self.params = batch_size, dict(params or {})
        # Built now, when the run starts: a bad name or parameter stops the run before it trains, and the
        # configs read are those of the code this process runs (not files edited during a long fit).
        self.refinements = load_refinements(self.methods, self.params)

    def on_test_end(self, trainer: L.Trainer, module) -> None:
        if not trainer.is_global_zero or trainer.datamodule is None:
            return
        keep_freed_memory()  # a batch job at the end of training: reuse the CRF's large buffers
        module.refinement_report, per_head = module_refinements(
            module, trainer.datamodule.datasets["test"], self.refinements, self.batch_size,
            trainer.precision_plugin.test_step_context)
        log.info("Refinements on the test split (network: %.1f ms/image):\n%s",
                 next(iter(per_head.values()))["network_ms_per_image"], refinement_tables(module, per_head))
        for task, report in per_head.items():
            prefix = f"test_refined/{task}" if len(per_head) > 1 else "test_refined"
            for lg in trainer.loggers:
                lg.log_metrics({f"{prefix}/{m}/{k}": report[m][k] for m in self.methods
                                for k in ("miou", "boundary_iou", "pixel_acc", "ms_per_image")},
                               step=trainer.global_step)
