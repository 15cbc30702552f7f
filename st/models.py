"""Topic models, in one readable file.

ProdLDA-style VAE (Srivastava & Sutton 2017) trained, as in the DSL method, to reconstruct the
LM's soft label over the vocabulary instead of (or, as a baseline, like) the bag of words:

    loss = KL(q(θ|x) ‖ p(θ)) + λ · KL(target ‖ softmax(BN(θ β) / τ_dec))

θ = softmax(μ + σ ε) is a document's topic mixture; β (K × V) holds the topics.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ProdLDAConfig:
    input_size: int
    vocab_size: int
    k: int
    hidden: list[int] = field(default_factory=lambda: [200, 200])
    dropout: float = 0.2
    theta_dropout: float = 0.2
    decoder_temperature: float = 3.0

    def to_dict(self) -> dict:
        return asdict(self)


class ProdLDA(nn.Module):
    def __init__(self, config: ProdLDAConfig) -> None:
        super().__init__()
        self.config = config
        k = config.k
        layers: list[nn.Module] = []
        size = config.input_size
        for h in config.hidden:
            layers += [nn.Linear(size, h), nn.Softplus()]
            size = h
        self.encoder = nn.Sequential(*layers, nn.Dropout(config.dropout))
        # Non-affine batch norms keep μ and log σ² from collapsing onto a few topics.
        self.mu = nn.Linear(size, k)
        self.mu_bn = nn.BatchNorm1d(k, affine=False)
        self.logvar = nn.Linear(size, k)
        self.logvar_bn = nn.BatchNorm1d(k, affine=False)
        self.theta_dropout = nn.Dropout(config.theta_dropout)
        self.beta = nn.Parameter(torch.empty(k, config.vocab_size))
        nn.init.xavier_uniform_(self.beta)
        self.decoder_bn = nn.BatchNorm1d(config.vocab_size, affine=False)
        # Laplace approximation of a Dirichlet(1) prior in the softmax basis: mean 0, variance 1 - 1/K.
        self.prior_mean = nn.Parameter(torch.zeros(k))
        self.prior_logvar = nn.Parameter(torch.full((k,), math.log(1.0 - 1.0 / k)))

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        return self.mu_bn(self.mu(h)), self.logvar_bn(self.logvar(h))

    def reconstruct(self, theta: torch.Tensor) -> torch.Tensor:
        """Log-probabilities over the vocabulary."""
        return F.log_softmax(self.decoder_bn(theta @ self.beta) / self.config.decoder_temperature, dim=-1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.posterior(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        theta = self.theta_dropout(F.softmax(z, dim=-1))
        return self.reconstruct(theta), mu, logvar

    def kl_prior(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """KL(N(μ, σ²) ‖ N(prior mean, prior variance)) per document."""
        prior_var = torch.exp(self.prior_logvar)
        return 0.5 * (
            torch.exp(logvar) / prior_var + (mu - self.prior_mean) ** 2 / prior_var - 1 + self.prior_logvar - logvar
        ).sum(-1)

    @torch.no_grad()
    def theta(self, x: torch.Tensor, samples: int = 10, seed: int = 0) -> torch.Tensor:
        """The mean of `samples` draws of θ, in eval mode (no dropout; batch norm uses running stats).
        Every document shares the same draws of ε, so a document's θ depends on nothing but the
        document: not on its batch, its position, or the other documents."""
        was_training = self.training
        self.eval()
        mu, logvar = self.posterior(x)
        std = torch.exp(0.5 * logvar)
        eps = torch.randn((samples, mu.shape[1]), generator=torch.Generator().manual_seed(seed), dtype=mu.dtype)
        total = torch.zeros_like(mu)
        for e in eps.to(mu.device):
            total += F.softmax(mu + e * std, dim=-1)
        self.train(was_training)
        return total / samples


def reconstruction_loss(log_recon: torch.Tensor, target: torch.Tensor, loss: str = "kl") -> torch.Tensor:
    """Per document: KL(target ‖ reconstruction), or the cross-entropy (which differs by the
    target's entropy, a constant for the model)."""
    ce = -(target * log_recon).sum(-1)
    if loss == "ce":
        return ce
    entropy = -(target * torch.log(target.clamp_min(1e-30))).sum(-1)
    return ce - entropy


class GensimLDA:
    """The LDA baseline: gensim's LdaModel on the same vocabulary and bag of words. It is saved as
    its sufficient statistics and priors (safetensors) and rebuilt from them: never pickled."""

    def __init__(self, lda) -> None:  # noqa: ANN001 (gensim.models.LdaModel)
        self.lda = lda

    @staticmethod
    def _empty(k: int, vocab_size: int, seed: int, passes: int, iterations: int, alpha, eta):  # noqa: ANN001, ANN205
        from gensim.models import LdaModel

        return LdaModel(
            num_topics=k,
            id2word={i: str(i) for i in range(vocab_size)},
            passes=passes,
            iterations=iterations,
            random_state=seed,
            alpha=alpha,
            eta=eta,
        )

    @classmethod
    def fit(cls, bow, k: int, passes: int, iterations: int, seed: int) -> GensimLDA:  # noqa: ANN001 (CSR matrix)
        from gensim.matutils import Sparse2Corpus

        lda = cls._empty(k, bow.shape[1], seed, passes, iterations, "symmetric", None)
        lda.update(Sparse2Corpus(bow, documents_columns=False), passes=passes, iterations=iterations)
        return cls(lda)

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor], seed: int, passes: int, iterations: int) -> GensimLDA:
        sstats = state["sstats"].double().numpy()
        k, v = sstats.shape
        lda = cls._empty(k, v, seed, passes, iterations, state["alpha"].double().numpy(), state["eta"].double().numpy())
        lda.state.sstats[...] = sstats
        lda.sync_state()
        return cls(lda)

    def state(self) -> dict[str, torch.Tensor]:
        return {
            "sstats": torch.from_numpy(np.ascontiguousarray(self.lda.state.sstats, dtype=np.float64)),
            "alpha": torch.from_numpy(np.asarray(self.lda.alpha, dtype=np.float64)),
            "eta": torch.from_numpy(np.asarray(self.lda.eta, dtype=np.float64)),
        }

    def topic_word(self) -> np.ndarray:
        return np.asarray(self.lda.get_topics(), dtype=np.float64)

    def theta(self, bow: np.ndarray, seed: int) -> np.ndarray:
        from gensim.matutils import Dense2Corpus

        # A fixed seed for the variational initialisation: the same documents get the same θ.
        self.lda.random_state = np.random.RandomState(seed)
        gamma, _ = self.lda.inference(list(Dense2Corpus(bow, documents_columns=False)))
        return (gamma / gamma.sum(axis=1, keepdims=True)).astype(np.float32)
