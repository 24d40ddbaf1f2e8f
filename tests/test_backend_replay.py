"""The graphed forward's short path (``CompiledCircuit._forward_replay``): a batch of a shape,
dtype and device seen before replays the captured checked forward with little host work.

On the CPU no CUDA graph exists, so the first group of tests installs a stand-in graph (one that
runs the same checked forward when replayed) where the runtime keeps its captured graphs, and
checks when the short path is taken, when it must give way to the general path, and that its
results and errors are the general path's. The GPU test runs the real capture."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_backend_helpers import CASES, data_for

from pcir import knobs
from pcir.backend import compile as pc_compile
from pcir.ir import DataError
from pcir.ir import evaluator as ev


class StandInGraph:
    """Replays ``model._checked_forward_core_at`` (the data read through the address in the
    word, the verdict written to the word after it, as the captured graph does) into the static
    outputs. ``signal=False``: a check that never writes the verdict (the runtime must then take
    the graph's own flag)."""

    def __init__(self, model, word, done, shape, dtype, out, signal=True):
        self.model, self.word, self.done, self.shape, self.dtype, self.out = model, word, done, shape, dtype, out
        self.signal = signal
        self.replays = 0
        self.verdicts = []

    def replay(self):
        self.replays += 1
        assert int(self.word[1]) == -1  # the runtime resets the verdict before each replay
        sig = (self.word[1:], self.done) if self.signal else None
        with torch.no_grad():
            vals, good = self.model._checked_forward_core_at(self.word, self.shape, self.dtype, sig)
        self.verdicts.append(int(self.word[1]))
        assert int(self.done[0]) == 0  # the check's counter is left at 0 for the next replay
        self.out[0].copy_(vals)
        self.out[1].copy_(good)


def with_stand_in(model, x: torch.Tensor, signal: bool = True) -> StandInGraph:
    model._normalised_cached()
    word = torch.tensor([x.data_ptr(), -1], dtype=torch.int64)
    done = torch.zeros(1, dtype=torch.int32)
    with torch.no_grad():
        vals, good = model._checked_forward_core_at(word, tuple(x.shape), x.dtype)
    out = (vals.clone(), good.clone())
    g = StandInGraph(model, word, done, tuple(x.shape), x.dtype, out, signal)
    model._graphs[("forward-checked", tuple(x.shape), x.dtype)] = (g, word.numpy(), out, word, done)
    return g


@pytest.fixture
def mixed(device):
    if device != "cpu" or not knobs.get().triton_interpret:
        pytest.skip("the stand-in graph runs the Triton engine under TRITON_INTERPRET=1 on the CPU")
    c = CASES["mixed"]()
    m = pc_compile(c, engine="triton", device="cpu", precision="fp32")
    x, _ = data_for(c, 6, seed=3)
    return c, m, torch.as_tensor(x, dtype=torch.float32)


def close(got: torch.Tensor, want) -> None:
    np.testing.assert_allclose(got.detach().double().numpy(), want, rtol=1e-4, atol=1e-4)


def test_a_seen_shape_replays_and_matches_the_reference(mixed):
    c, m, x = mixed
    g = with_stand_in(m, x)
    with torch.no_grad():
        first = m(x)
    assert g.replays == 1
    close(first, ev.log_likelihood(c, x.numpy()))
    other = x.flip(0).contiguous()
    with torch.no_grad():
        second = m(other)
    assert g.replays == 2
    close(second, ev.log_likelihood(c, other.numpy()))
    # the result is the caller's own tensor: the next replay must not overwrite it
    close(first, ev.log_likelihood(c, x.numpy()))
    assert first.data_ptr() != g.out[0].data_ptr()


@pytest.mark.parametrize("signal", [True, False])
def test_bad_data_on_the_short_path_names_the_entry(mixed, signal):
    _, m, x = mixed
    g = with_stand_in(m, x, signal)
    bad = x.clone()
    bad[4, 2] = 9
    bad[1, 0] = 7
    with pytest.raises(DataError, match=r"value 7 at row 1, column 0 \(x0\)"):
        with torch.no_grad():
            m(bad)
    assert g.replays == 1
    bad[1, 0] = 0
    bad[4, 2] = float("nan")
    with pytest.raises(DataError, match=r"NaN in data at row 4, column 2"):
        with torch.no_grad():
            m(bad)
    assert g.replays == 2
    with torch.no_grad():
        m(x)
    # the check's last program wrote the count of rejected entries; without the signal the
    # word stays unset and the runtime read the graph's flag instead
    assert g.verdicts == ([2, 1, 0] if signal else [-1, -1, -1])


def test_the_verdict_word_decides_the_short_path(mixed, monkeypatch):
    # the runtime believes the word: a check that said 0 rejected entries lets the call return,
    # one that counted some raises (and the eager check then names the entry)
    _, m, x = mixed
    g = with_stand_in(m, x)
    real = type(m)._data_ok
    seen = []

    def spy(ent):
        seen.append(int(ent[1][1]))
        return real(ent)

    monkeypatch.setattr(type(m), "_data_ok", staticmethod(spy))
    with torch.no_grad():
        m(x)
    bad = x.clone()
    bad[0, 1] = 3
    with pytest.raises(DataError, match=r"row 0, column 1"):
        with torch.no_grad():
            m(bad)
    assert seen == [0, 1] and g.replays == 2


@pytest.mark.parametrize(
    "change",
    ["set_param", "graphs_off", "other_dtype", "other_shape", "not_contiguous", "params_grad", "x_grad", "missing"],
)
def test_the_general_path_runs_where_the_graph_cannot_answer(mixed, change):
    c, m, x = mixed
    g = with_stand_in(m, x)
    want_c = c
    missing = None
    arg = x
    grad = False
    if change == "set_param":
        m.set_param("s1.w", np.full((4, 8), 1 / 8))
        want_c = m.to_circuit()
    elif change == "graphs_off":
        m.cuda_graphs = False
    elif change == "other_dtype":
        arg = x.to(torch.int64)
    elif change == "other_shape":
        arg = x[:5]
    elif change == "not_contiguous":  # same shape and dtype: the graph reads rows of V entries
        arg = x.t().contiguous().t()
    elif change == "params_grad":
        grad = True  # the parameters require grad (a Module's default) and grad mode is on
    elif change == "x_grad":
        for p in m.parameters():
            p.requires_grad_(False)
        arg = x.clone().requires_grad_(True)
        grad = True
    elif change == "missing":
        missing = torch.zeros(x.shape, dtype=torch.bool)
    with torch.set_grad_enabled(grad):
        out = m(arg, missing)
    assert g.replays == 0, change
    close(out, ev.log_likelihood(want_c, arg.detach().numpy().astype(np.float64)))
    if change == "params_grad":
        out.sum().backward()
        assert m.sum_logits.grad is not None and torch.isfinite(m.sum_logits.grad).all()
    if change == "x_grad":
        out.sum().backward()
        assert arg.grad is not None


def test_after_an_em_step_the_replay_answers_with_the_new_parameters(mixed):
    # EM writes the normalised buffers the graph reads (and marks them current): no refresh needed
    c, m, x = mixed
    g = with_stand_in(m, x)
    m.forward_backward(x)
    m.em_step(0.5, 0.1)
    new = m.to_circuit()
    old = ev.log_likelihood(c, x.numpy())
    want = ev.log_likelihood(new, x.numpy())
    assert np.abs(want - old).max() > 1e-2  # the step changed the answer
    with torch.no_grad():
        close(m(x), want)
    assert g.replays == 1


def test_after_the_parameters_change_the_next_call_replays_again(mixed):
    # the general path refreshes the normalised buffers the graph reads; then the short path is
    # valid again and answers with the new parameters
    c, m, x = mixed
    g = with_stand_in(m, x)
    m.set_param("s1.w", np.full((4, 8), 1 / 8))
    new = m.to_circuit()
    with torch.no_grad():
        close(m(x), ev.log_likelihood(new, x.numpy()))  # general path
        assert g.replays == 0
        close(m(x), ev.log_likelihood(new, x.numpy()))  # short path, new buffers
    assert g.replays == 1


def test_versions_key_sees_every_parameter_change(mixed):
    _, m, _ = mixed
    base = m._versions()
    with torch.no_grad():
        m.sum_logits.add_(0)
    assert m._versions() != base
    base = m._versions()
    with torch.no_grad():
        m.cat_logits.mul_(1)
    assert m._versions() != base
    base = m._versions()
    m.cat_logits.data = m.cat_logits.data.clone()
    assert m._versions() != base


@pytest.mark.gpu
def test_real_graphs_replay_on_the_short_path(device, monkeypatch):
    c = CASES["mixed"]()
    m = pc_compile(c, device=device, precision="fp32")
    assert m._engine().name == "triton"
    xs = [torch.as_tensor(data_for(c, 64, seed=s)[0], dtype=torch.float32, device=device) for s in range(3)]
    taken = []
    real = type(m)._forward_replay

    def spy(self, x):
        out = real(self, x)
        taken.append(out is not None)
        return out

    monkeypatch.setattr(type(m), "_forward_replay", spy)
    outs = []
    with torch.no_grad():
        for i in range(6):
            outs.append(m(xs[i % 3]))
    assert taken[-3:] == [True, True, True], taken
    for i, o in enumerate(outs):
        close(o.cpu(), ev.log_likelihood(c, xs[i % 3].cpu().numpy()))
    bad = xs[0].clone()
    bad[7, 1] = 5
    with pytest.raises(DataError, match=r"value 5 at row 7, column 1 \(x1\)"):
        with torch.no_grad():
            m(bad)
    assert taken[-1] is True
    # data of another dtype (a graph of its own, reading int64 through the address) and data
    # that is not contiguous (the general path replays the graph on a contiguous copy)
    c_int = CASES["tied_bernoulli"]()
    mi = pc_compile(c_int, device=device, precision="fp32")
    ints = [torch.as_tensor(data_for(c_int, 40, seed=s)[0], device=device).to(torch.int64) for s in range(3)]
    with torch.no_grad():
        for i in range(5):
            close(mi(ints[i % 3]).cpu(), ev.log_likelihood(c_int, ints[i % 3].cpu().numpy().astype(np.float64)))
        assert taken[-3:] == [True, True, True], taken
        strided = xs[1].t().contiguous().t()
        close(m(strided).cpu(), ev.log_likelihood(c, xs[1].cpu().numpy()))
    assert taken[-1] is False  # not contiguous: the general path
    # a training step writes the buffers the graph reads (and marks them current): the next
    # call replays at once, with the new parameters
    m.train_step(xs[1], 0.5, 0.1)
    new = m.to_circuit()
    with torch.no_grad():
        close(m(xs[2]).cpu(), ev.log_likelihood(new, xs[2].cpu().numpy()))
    assert taken[-1] is True, taken
    # a parameter set by hand: the general path refreshes the buffers, then the short path again
    m.set_param("s1.w", np.full((4, 8), 1 / 8))
    new = m.to_circuit()
    with torch.no_grad():
        close(m(xs[2]).cpu(), ev.log_likelihood(new, xs[2].cpu().numpy()))
        close(m(xs[2]).cpu(), ev.log_likelihood(new, xs[2].cpu().numpy()))
    assert taken[-2:] == [False, True], taken


@pytest.mark.gpu
def test_an_unset_verdict_word_falls_back_to_the_graphs_flag(device):
    # should the data check never write its word (it always does; this guards the wait), the
    # wait ends once the stream is idle and the graph's own flag answers, either way
    if device != "cuda":
        pytest.skip("the wait looks at a CUDA stream")
    from pcir.backend.runtime import CompiledCircuit

    word = np.array([0, -1], dtype=np.int64)
    for flag in (True, False):
        good = torch.tensor(flag, device="cuda")
        torch.cuda.synchronize()
        assert CompiledCircuit._data_ok((None, word, (None, good))) is flag
    word[1] = 3  # a verdict written: it decides, whatever the flag says
    assert CompiledCircuit._data_ok((None, word, (None, torch.tensor(True, device="cuda")))) is False
