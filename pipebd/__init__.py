"""pipebd: fast blockwise knowledge distillation on one to many devices (README.md, DESIGN.md)."""


def load_student(directory: str):
    """The student exported to ``directory`` (``python -m pipebd export``) as a plain ``nn.Sequential``;
    see :func:`pipebd.export.load_student`."""
    from .export import load_student as _load

    return _load(directory)
