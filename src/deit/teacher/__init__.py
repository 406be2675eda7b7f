"""The frozen teacher of distillation through attention (paper section 4), in one package.

- :mod:`~deit.teacher.frozen`: :class:`Teacher`, any classifier frozen in eval mode, with the
  student's normalisation converted to its own;
- :mod:`~deit.teacher.build`: :func:`build_teacher` from a model name and/or a checkpoint;
- :mod:`~deit.teacher.fast`: the fast path (:func:`optimize_teacher`: BN folding, int8/bf16,
  the agreement check, :class:`TeacherReport`);
- :mod:`~deit.teacher.store`: the teacher-label store (:class:`TeacherLabelStore`);
- :mod:`~deit.teacher.for_run`: :func:`build_run_teacher`, a run's teacher from its
  configuration.

The pass that fills a store runs over a run's views, so it lives above the run:
:mod:`deit.label_pass`. Names below are imported on first use, so importing one submodule
(the loss needs :mod:`~deit.teacher.frozen` only) does not load the others.
"""

from .. import _lazy

#: Public name -> the submodule that defines it.
_EXPORTS = {
    "Teacher": "frozen",
    "build_teacher": "build",
    "MAX_TARGET_DISTANCE": "fast",
    "FastTeacher": "fast",
    "TeacherReport": "fast",
    "draw_views": "fast",
    "optimize_teacher": "fast",
    "seconds_per_call": "fast",
    "target_distance": "fast",
    "teacher_candidates": "fast",
    "FORMAT_VERSION": "store",
    "VIEW_FIELDS": "store",
    "StoreWriter": "store",
    "TeacherLabelStore": "store",
    "file_sha256": "store",
    "label_dtype": "store",
    "run_manifest": "store",
    "store_size_bytes": "store",
    "build_run_teacher": "for_run",
}

__all__ = list(_EXPORTS)

__getattr__, __dir__ = _lazy.exports(globals(), _EXPORTS)
