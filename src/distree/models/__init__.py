"""Network definitions: the teachers (WideResNet, whitened convnet), student branches, exit heads, MAC counts."""

from distree.exits import ExitOutput, ExitRecords, StudentMacs
from distree.models.branch import Branch
from distree.models.heads import ExitHead, HeadFusion
from distree.models.registry import build_teacher
from distree.models.student import DistrEEStudent
from distree.models.teacher import Teacher, TeacherOutput
from distree.models.whitened_convnet import WhitenedConvNet
from distree.models.wideresnet import WideResNet

__all__ = [
    "Branch",
    "DistrEEStudent",
    "ExitHead",
    "ExitOutput",
    "ExitRecords",
    "HeadFusion",
    "StudentMacs",
    "Teacher",
    "TeacherOutput",
    "WhitenedConvNet",
    "WideResNet",
    "build_teacher",
]
