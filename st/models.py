"""Topic models, in one readable file.

Every model here can be trained, as in the DSL method, to reconstruct the LM's soft label over
the vocabulary instead of (or, as a baseline, like) the bag of words. The VAE backbones share an
encoder and a logistic-normal prior and differ only in how θ becomes a reconstruction:

    loss = KL(q(θ|x) ‖ p(θ)) + λ · KL(target ‖ reconstruction(θ))

    prodlda  reconstruction = softmax(BN(θ β) / τ_dec)                (Srivastava & Sutton 2017)
    etm      reconstruction = θ softmax(α ρᵀ)                         (Dieng et al. 2020)
    ecrtm    reconstruction = softmax(BN(θ softmax_K(-‖ρ - α‖² / τ_β)) / τ_dec),
             plus embedding-clustering regularisation by optimal transport (Wu et al. 2023)

FASTopic (Wu et al. 2024) has no encoder: θ and β are both transport plans, between document and
topic embeddings and between topic and word embeddings, and θ β reconstructs the target.

θ is a document's topic mixture; β (K × V) holds the topics; α are topic embeddings, ρ word
embeddings.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from st.options import TEMPERATURE


@dataclass
class TopicConfig:
    input_size: int
    vocab_size: int
    k: int
    backbone: str = "prodlda"
    hidden: list[int] = field(default_factory=lambda: [200, 200])
    dropout: float = 0.2
    theta_dropout: float = 0.2
    decoder_temperature: float = TEMPERATURE
    decoder_norm: float = 1.0  # prodlda, ecrtm: see DecoderNorm
    decoder_affine: bool = False  # prodlda, ecrtm: a learned gain and shift per word after the norm
    embedding_size: int = 200  # etm, ecrtm: size of α and ρ (fastopic: the input's size)
    beta_temperature: float = 0.2  # ecrtm
    ecr_weight: float = 250.0  # ecrtm
    sinkhorn_alpha: float = 20.0  # ecrtm; fastopic uses its own two below
    doc_topic_alpha: float = 3.0  # fastopic
    topic_word_alpha: float = 2.0  # fastopic

    def to_dict(self) -> dict:
        return asdict(self)


def sinkhorn_potential(
    cost: torch.Tensor, alpha: float, iterations: int = 1000, tol: float = 5e-3, warm: torch.Tensor | None = None
) -> torch.Tensor:
    """The column potential g of entropic optimal transport between uniform marginals (log domain,
    so that large α·cost never underflows). The plan is then exp(-α cost + f + g) with f the row
    potential, i.e. each row is softmax(-α cost_i + g), scaled by the row's mass."""
    with torch.no_grad():
        n, m = cost.shape
        logits = -alpha * cost.detach()
        log_a, log_b = -math.log(n), -math.log(m)
        g = warm.clone() if warm is not None else torch.zeros(m, dtype=cost.dtype, device=cost.device)
        for i in range(iterations):
            f = log_a - torch.logsumexp(logits + g, dim=1)
            g = log_b - torch.logsumexp(logits + f[:, None], dim=0)
            if i % 10 == 9:
                rows = torch.exp(torch.logsumexp(logits + f[:, None] + g, dim=1) - log_a)
                if (rows - 1).abs().max() < tol:
                    break
        return g


def squared_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((x * x).sum(1, keepdim=True) + (y * y).sum(1) - 2 * x @ y.T).clamp_min(0)


class DecoderNorm(nn.BatchNorm1d):
    """Batch norm of the decoder's word logits that divides each word's centred logit by its
    standard deviation raised to `power`: 1 is ProdLDA's batch norm, 0 only centres. With
    `affine`, each word's result is then multiplied by a learned gain and shifted by a learned
    bias (both start as the identity).

    Full standardisation gives every word the same spread across documents, which suits a bag of
    words, where any word may come and go. A soft label from a small LM varies little from one
    document to the next in most words, and scaling that little up to the spread of its telling
    words lets noise shape the topics. The learned gain lets the decoder give each word the spread
    the target asks of it, and the shift its level over the corpus, so that β is left with what
    sets documents apart. The running statistics are a batch norm's, so models saved before these
    options load unchanged."""

    def __init__(self, size: int, power: float = 1.0, affine: bool = False) -> None:
        super().__init__(size, affine=False)
        self.power = power
        # Not BatchNorm1d's own affine: its bias would be rescaled with the spread below.
        self.gain = nn.Parameter(torch.ones(size)) if affine else None
        self.shift = nn.Parameter(torch.zeros(size)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        if self.power != 1.0:
            var = x.var(dim=0, unbiased=False) if self.training else self.running_var
            assert var is not None
            out = out * (var + self.eps) ** ((1.0 - self.power) / 2)
        if self.gain is not None and self.shift is not None:
            out = out * self.gain + self.shift
        return out


class VAE(nn.Module, ABC):
    """Encoder, reparameterised θ and prior shared by the VAE backbones; each backbone says how θ
    becomes a reconstruction and what its topics are."""

    def __init__(self, config: TopicConfig) -> None:
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
        # Laplace approximation of a Dirichlet(1) prior in the softmax basis: mean 0, variance 1 - 1/K.
        self.prior_mean = nn.Parameter(torch.zeros(k))
        self.prior_logvar = nn.Parameter(torch.full((k,), math.log(1.0 - 1.0 / k)))

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        return self.mu_bn(self.mu(h)), self.logvar_bn(self.logvar(h))

    @abstractmethod
    def reconstruct(self, theta: torch.Tensor) -> torch.Tensor:
        """Log-probabilities over the vocabulary."""

    @abstractmethod
    def topic_word(self) -> torch.Tensor:
        """K × V: each topic's distribution over the vocabulary."""

    def regularizer(self) -> torch.Tensor:
        return torch.zeros(())

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

    def loss(
        self,
        x: torch.Tensor,
        target: torch.Tensor,
        lam: float,
        loss: str,
        clusters: tuple[torch.Tensor, float] | None = None,
    ) -> torch.Tensor:
        """The objective per document; with `clusters` (each document's cluster, −1 for none, and a
        weight), plus the weighted cross-entropy between the posterior mean and the cluster."""
        log_recon, mu, logvar = self(x)
        total = (self.kl_prior(mu, logvar) + lam * reconstruction_loss(log_recon, target, loss)).mean()
        if clusters is not None:
            cluster, weight = clusters
            held = cluster >= 0
            if held.any():
                total = total + weight * F.cross_entropy(mu[held], cluster[held], reduction="sum") / len(x)
        return total + self.regularizer()

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


class ProdLDA(VAE):
    def __init__(self, config: TopicConfig) -> None:
        super().__init__(config)
        self.beta = nn.Parameter(torch.empty(config.k, config.vocab_size))
        nn.init.xavier_uniform_(self.beta)
        self.decoder_bn = DecoderNorm(config.vocab_size, config.decoder_norm, config.decoder_affine)

    def reconstruct(self, theta: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.decoder_bn(theta @ self.beta) / self.config.decoder_temperature, dim=-1)

    def topic_word(self) -> torch.Tensor:
        return F.softmax(self.beta.detach().double(), dim=-1)


class ETM(VAE):
    def __init__(self, config: TopicConfig) -> None:
        super().__init__(config)
        self.rho = nn.Parameter(torch.empty(config.vocab_size, config.embedding_size))
        self.alpha = nn.Parameter(torch.empty(config.k, config.embedding_size))
        nn.init.xavier_uniform_(self.rho)
        nn.init.xavier_uniform_(self.alpha)

    def beta(self) -> torch.Tensor:
        return F.softmax(self.alpha @ self.rho.T, dim=-1)

    def reconstruct(self, theta: torch.Tensor) -> torch.Tensor:
        return torch.log(theta @ self.beta() + 1e-10)

    def topic_word(self) -> torch.Tensor:
        return self.beta().detach().double()


class ECRTM(VAE):
    def __init__(self, config: TopicConfig) -> None:
        super().__init__(config)
        self.rho = nn.Parameter(nn.init.trunc_normal_(torch.empty(config.vocab_size, config.embedding_size), std=0.1))
        self.alpha = nn.Parameter(nn.init.trunc_normal_(torch.empty(config.k, config.embedding_size), std=0.1))
        self.decoder_bn = DecoderNorm(config.vocab_size, config.decoder_norm, config.decoder_affine)
        self.ecr_potential: torch.Tensor
        self.register_buffer("ecr_potential", torch.zeros(config.vocab_size))

    def beta(self) -> torch.Tensor:
        return F.softmax(-squared_distances(self.alpha, self.rho) / self.config.beta_temperature, dim=0)

    def reconstruct(self, theta: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.decoder_bn(theta @ self.beta()) / self.config.decoder_temperature, dim=-1)

    def regularizer(self) -> torch.Tensor:
        """Each topic embedding the centre of its own cluster of word embeddings: the cost of the
        optimal transport between topics and words (its gradient is the plan, held fixed)."""
        cost = squared_distances(self.alpha, self.rho)
        g = sinkhorn_potential(cost, self.config.sinkhorn_alpha, warm=self.ecr_potential)
        self.ecr_potential.copy_(g)
        plan = F.softmax(-self.config.sinkhorn_alpha * cost.detach() + g, dim=1) / len(cost)
        return self.config.ecr_weight * (plan * cost).sum()

    def topic_word(self) -> torch.Tensor:
        b = self.beta().detach().double()
        return b / b.sum(dim=1, keepdim=True)


class FASTopic(nn.Module):
    """Dual semantic-relation reconstruction: θ_d = softmax(-α_DT ‖e_d - t‖² + g_DT) and
    β_k = softmax(-α_TW ‖t_k - w‖² + g_TW), the rows of the two balanced transport plans.
    The plans' column potentials g are kept after training, so a new document's θ depends on the
    document alone."""

    def __init__(self, config: TopicConfig) -> None:
        super().__init__()
        self.config = config
        size = config.input_size
        self.topic_embeddings = nn.Parameter(F.normalize(nn.init.trunc_normal_(torch.empty(config.k, size), std=0.1)))
        self.word_embeddings = nn.Parameter(
            F.normalize(nn.init.trunc_normal_(torch.empty(config.vocab_size, size), std=0.1))
        )
        self.doc_topic_potential: torch.Tensor
        self.topic_word_potential: torch.Tensor
        self.register_buffer("doc_topic_potential", torch.zeros(config.k))
        self.register_buffer("topic_word_potential", torch.zeros(config.vocab_size))

    def beta(self, update: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        cost = squared_distances(self.topic_embeddings, self.word_embeddings)
        alpha = self.config.topic_word_alpha
        if update:
            self.topic_word_potential.copy_(sinkhorn_potential(cost, alpha, warm=self.topic_word_potential))
        logits = -alpha * cost + self.topic_word_potential
        return F.softmax(logits, dim=1), cost

    def doc_topic(self, x: torch.Tensor, update: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        cost = squared_distances(F.normalize(x), self.topic_embeddings)
        alpha = self.config.doc_topic_alpha
        if update:
            self.doc_topic_potential.copy_(sinkhorn_potential(cost, alpha, warm=self.doc_topic_potential))
        return F.softmax(-alpha * cost + self.doc_topic_potential, dim=1), cost

    def loss(self, x: torch.Tensor, target: torch.Tensor, lam: float, loss: str) -> torch.Tensor:
        theta, dt_cost = self.doc_topic(x)
        beta, tw_cost = self.beta()
        transport = (theta.detach() * dt_cost).sum() / len(x) + (beta.detach() * tw_cost).sum() / len(beta)
        log_recon = torch.log(theta @ beta + 1e-12)
        return lam * reconstruction_loss(log_recon, target, loss).mean() + transport

    def topic_word(self) -> torch.Tensor:
        return self.beta(update=False)[0].detach().double()

    @torch.no_grad()
    def theta(self, x: torch.Tensor, samples: int = 10, seed: int = 0) -> torch.Tensor:  # deterministic
        return self.doc_topic(x, update=False)[0]


def build(config: TopicConfig) -> VAE | FASTopic:
    backbones: dict[str, Callable[[TopicConfig], VAE | FASTopic]] = {
        "prodlda": ProdLDA,
        "etm": ETM,
        "ecrtm": ECRTM,
        "fastopic": FASTopic,
    }
    return backbones[config.backbone](config)


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

    def __init__(self, lda) -> None:  # gensim.models.LdaModel
        self.lda = lda

    @staticmethod
    def _empty(k: int, vocab_size: int, seed: int, passes: int, iterations: int, alpha, eta):
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
    def fit(cls, bow, k: int, passes: int, iterations: int, seed: int) -> GensimLDA:  # CSR matrix
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
