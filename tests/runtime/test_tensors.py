import math

import pytest
import torch

from distree.runtime.proto import distree_pb2 as pb
from distree.runtime.tensors import InvalidTensor, array_from_proto, to_proto


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_round_trip_is_exact_and_writable(dtype):
    t = (torch.arange(24) * 7).reshape(2, 3, 4).to(dtype)
    back = torch.from_numpy(array_from_proto(to_proto(t), "x", shape=(None, 3, 4)))
    assert back.dtype == dtype and torch.equal(back, t)
    back += 1  # a copy, not a view of the message's read-only bytes


def test_errors_name_the_problem():
    good = to_proto(torch.zeros(2, 3))
    with pytest.raises(InvalidTensor, match="x: dtype 'float32' not accepted"):
        array_from_proto(good, "x", ("uint8",))
    with pytest.raises(InvalidTensor, match=r"x: shape \(2, 3\) does not match the expected \(\*, 4\)"):
        array_from_proto(good, "x", shape=(None, 4))
    with pytest.raises(InvalidTensor, match="23 bytes"):
        array_from_proto(pb.Tensor(dtype="float32", shape=[2, 3], data=bytes(23)), "x")
    with pytest.raises(InvalidTensor, match="NaN or infinite"):
        array_from_proto(to_proto(torch.tensor([1.0, math.inf])), "x")
    with pytest.raises(InvalidTensor, match="empty"):
        array_from_proto(pb.Tensor(dtype="uint8", shape=[0, 3], data=b""), "x")
    with pytest.raises(InvalidTensor, match="over the limit"):
        array_from_proto(pb.Tensor(dtype="uint8", shape=[10], data=bytes(10)), "x", max_elements=9)
    with pytest.raises(InvalidTensor, match="cannot send dtype int64"):
        to_proto(torch.zeros(2, dtype=torch.int64))
