"""User-style PyTorch modules that the zoo never uses, each trained for a few seconds on
real text, for the package_torch tests (training side and served)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional

TEXT = (
    "in the beginning god created the heaven and the earth . and the earth was without "
    "form , and void ; and darkness was upon the face of the deep . and the spirit of god "
    "moved upon the face of the waters . and god said , let there be light : and there was "
    "light . and god saw the light , that it was good : and god divided the light from the "
    "darkness ."
)
WORDS = TEXT.split()
VOCABULARY = ["<pad>", "<unk>", "<s>", "</s>", *sorted(set(WORDS))]
IDS = torch.tensor([VOCABULARY.index(w) for w in WORDS])
LABELS = ("god", "the", "other")  # the classifier's: the word just read


class WordLSTM(nn.Module):
    """2-layer LSTM word model, batch_first=True, with dropout (ignored when served)."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(len(VOCABULARY), 16)
        self.lstm = nn.LSTM(16, 24, num_layers=2, batch_first=True, dropout=0.1)
        self.drop = nn.Dropout(0.1)
        self.out = nn.Linear(24, len(VOCABULARY))

    def forward(self, x: Tensor) -> Tensor:
        h, _ = self.lstm(self.embedding(x))
        logits: Tensor = self.out(self.drop(h))
        return logits


class WordGRU(nn.Module):
    """nn.GRU word model, time-major (batch_first=False)."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(len(VOCABULARY), 12)
        self.gru = nn.GRU(12, 20)
        self.out = nn.Linear(20, len(VOCABULARY))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h, last = self.gru(self.embedding(x))
        return self.out(h), last


class ReluClassifier(nn.Module):
    """1-layer ReLU nn.RNN classifier: which of LABELS the word just read is."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(len(VOCABULARY), 8)
        self.rnn = nn.RNN(8, 16, nonlinearity="relu", batch_first=True)
        self.out = nn.Linear(16, len(LABELS))

    def forward(self, x: Tensor) -> Tensor:
        h, _ = self.rnn(self.embedding(x))
        logits: Tensor = self.out(h)
        return logits


class TwoSpeedCell(nn.Module):
    """A custom cell with a tuple state: a fast state h [B, 20] and a slow one kept as
    [3, B, 8] (batch on axis 1), mixed at each step."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(len(VOCABULARY), 10)
        self.fast = nn.Linear(10 + 20 + 24, 20)
        self.slow = nn.Linear(20, 24)
        self.out = nn.Linear(20 + 24, len(VOCABULARY))

    def initial_state(self, batch: int) -> tuple[Tensor, Tensor]:
        return torch.zeros(batch, 20), torch.full((3, batch, 8), 0.1)

    def step(self, x: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        h, slow = state
        slow_flat = slow.permute(1, 0, 2).reshape(-1, 24)
        h = torch.tanh(self.fast(torch.cat([self.embedding(x), h, slow_flat], -1)))
        slow_flat = 0.9 * slow_flat + 0.1 * torch.tanh(self.slow(h))
        new = (h, slow_flat.reshape(-1, 3, 8).permute(1, 0, 2))
        return self.head(new), new

    def head(self, state: tuple[Tensor, Tensor]) -> Tensor:
        h, slow = state
        logits: Tensor = self.out(torch.cat([h, slow.permute(1, 0, 2).reshape(-1, 24)], -1))
        return logits

    def forward(self, x: Tensor) -> Tensor:
        state = self.initial_state(x.shape[0])
        outputs = []
        for t in range(x.shape[1]):
            y, state = self.step(x[:, t], state)
            outputs.append(y)
        return torch.stack(outputs, 1)


class VectorLSTMRegressor(nn.Module):
    """Float vectors in (4 features), a 2-value regression out, through a projection."""

    def __init__(self) -> None:
        super().__init__()
        self.project = nn.Linear(4, 8)
        self.lstm = nn.LSTM(8, 16, batch_first=True)
        self.out = nn.Linear(16, 2)

    def forward(self, x: Tensor) -> Tensor:
        h, _ = self.lstm(self.project(x))
        values: Tensor = self.out(h)
        return values


class BrokenLSTM(WordLSTM):
    """Its forward scales the embeddings: an operation the common stack does not have."""

    def forward(self, x: Tensor) -> Tensor:
        h, _ = self.lstm(2.0 * self.embedding(x))
        logits: Tensor = self.out(h)
        return logits


class BidirectionalGRU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(len(VOCABULARY), 8)
        self.gru = nn.GRU(8, 8, batch_first=True, bidirectional=True)
        self.out = nn.Linear(16, len(VOCABULARY))

    def forward(self, x: Tensor) -> Tensor:
        h, _ = self.gru(self.embedding(x))
        logits: Tensor = self.out(h)
        return logits


def word_batches(rows: int = 8, length: int = 12, seed: int = 0) -> Callable[[], Tensor]:
    generator = torch.Generator().manual_seed(seed)

    def draw() -> Tensor:
        starts = torch.randint(0, len(IDS) - length - 1, (rows,), generator=generator)
        return torch.stack([IDS[s : s + length + 1] for s in starts.tolist()])

    return draw


def train(module: nn.Module, loss: Callable[[nn.Module], Tensor], steps: int = 25) -> nn.Module:
    """A few seconds of Adam: enough to move the weights away from their initialisation."""
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-2)
    module.train()
    for _ in range(steps):
        optimizer.zero_grad()
        loss(module).backward()  # type: ignore[no-untyped-call]
        optimizer.step()
    return module.eval()


def next_word_loss(
    draw: Callable[[], Tensor], batch_first: bool = True
) -> Callable[[nn.Module], Tensor]:
    def loss(module: nn.Module) -> Tensor:
        rows = draw()
        inputs = rows[:, :-1] if batch_first else rows[:, :-1].T
        result = module(inputs)
        logits = result[0] if isinstance(result, tuple) else result
        if not batch_first:
            logits = logits.transpose(0, 1)
        return functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), rows[:, 1:].reshape(-1)
        )

    return loss


def word_labels(rows: Tensor) -> Tensor:
    """The classifier's targets: each word's index in LABELS (``other`` for the rest)."""
    god, the = VOCABULARY.index("god"), VOCABULARY.index("the")
    return torch.where(rows == god, 0, torch.where(rows == the, 1, 2))


def trained_modules(*only: str) -> dict[str, nn.Module]:
    """Every user-style module (or those named), trained (a few seconds each)."""
    draw = word_batches()

    def classify(module: nn.Module) -> Tensor:
        rows = draw()[:, :-1]
        logits = module(rows)
        return functional.cross_entropy(
            logits.reshape(-1, len(LABELS)), word_labels(rows).reshape(-1)
        )

    generator = torch.Generator().manual_seed(1)

    def regress(module: nn.Module) -> Tensor:
        x = torch.randn(8, 12, 4, generator=generator)
        target = torch.stack([x[..., 0].cumsum(1) / 4, x[..., 1] * x[..., 2]], -1)
        return functional.mse_loss(module(x), target)

    torch.manual_seed(0)
    trainers: dict[str, Callable[[], nn.Module]] = {
        "word-lstm": lambda: train(WordLSTM(), next_word_loss(draw)),
        "word-gru": lambda: train(WordGRU(), next_word_loss(draw, batch_first=False)),
        "word-class-rnn": lambda: train(ReluClassifier(), classify),
        "two-speed": lambda: train(TwoSpeedCell(), next_word_loss(draw), steps=15),
        "vector-lstm": lambda: train(VectorLSTMRegressor(), regress),
    }
    return {name: trainer() for name, trainer in trainers.items() if not only or name in only}
