"""Network definitions: the WideResNet teacher, student branches, exit heads, MAC counts."""

from distree.exits import ExitOutput, ExitRecords, StudentMacs
from distree.models.branch import Branch
from distree.models.heads import ExitHead, HeadFusion
from distree.models.student import DistrEEStudent
from distree.models.wideresnet import TeacherOutput, WideResNet

__all__ = [
    "Branch",
    "DistrEEStudent",
    "ExitHead",
    "ExitOutput",
    "ExitRecords",
    "HeadFusion",
    "StudentMacs",
    "TeacherOutput",
    "WideResNet",
]
