"""Network definitions: the WideResNet teacher, student branches, exit heads, MAC counts."""

from distree.models.branch import Branch
from distree.models.heads import ExitHead, ExitOutput, ExitRecords
from distree.models.student import DistrEEStudent, StudentMacs
from distree.models.wideresnet import TeacherOutput, WideResNet

__all__ = [
    "Branch",
    "DistrEEStudent",
    "ExitHead",
    "ExitOutput",
    "ExitRecords",
    "StudentMacs",
    "TeacherOutput",
    "WideResNet",
]
