"""Client-level differential-privacy accounting across federated rounds, on Opacus's accountants.

One round of DP-FedAvg (clip each client's update, add Gaussian noise, sample clients) is one
step of a subsampled Gaussian mechanism in which the *client* is the unit of privacy: the
sampling rate is clients per round / total clients. Opacus's accountants compose those steps;
this class only keeps the configuration beside them, refuses values the maths cannot take and
makes the state resumable, so an audit interrupted after round 40 continues at round 41 with the
same epsilon (a fresh accountant per round would silently restart at zero).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

from opacus.accountants import GaussianAccountant, IAccountant, PRVAccountant, RDPAccountant

from fedleak.errors import ConfigError

AccountantName = Literal["rdp", "prv", "gdp"]
_ACCOUNTANTS: dict[str, type[IAccountant]] = {
    "rdp": RDPAccountant,
    "prv": PRVAccountant,
    "gdp": GaussianAccountant,
}


def _fail(param: str, constraint: str, value: Any) -> ConfigError:
    return ConfigError(f"`{param}` of ClientDPAccountant must be {constraint}; got {value!r}.")


def _is_real(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)


class ClientDPAccountant:
    """The (epsilon, delta) client-level DP spent so far by a DP-FedAvg federation.

    Args:
        noise_multiplier: noise std / clip norm of each round (``ClipNoiseFilter``'s z), > 0.
        sample_rate: probability that a client takes part in a round (clients per round / total
            clients), in (0, 1]. Opacus assumes Poisson sampling; fixed-size sampling of clients
            (``fedleak.fl.sample_clients``) is the usual approximation (McMahan et al. 2018).
        delta: target delta, in (0, 1); usually below 1 / number of clients.
        accountant: "rdp" (Renyi DP, default), "prv" (privacy random variables, tighter) or
            "gdp" (Gaussian DP; Opacus warns it can underestimate epsilon).

    Example:
        >>> acc = ClientDPAccountant(1.0, 0.1, 1e-5)
        >>> acc.step(rounds=100)
        >>> round(acc.epsilon, 2) > 0
        True
    """

    def __init__(
        self,
        noise_multiplier: float,
        sample_rate: float,
        delta: float,
        *,
        accountant: AccountantName = "rdp",
    ) -> None:
        if not _is_real(noise_multiplier) or noise_multiplier <= 0:
            raise _fail("noise_multiplier", "a finite number > 0", noise_multiplier)
        if not _is_real(sample_rate) or not 0 < sample_rate <= 1:
            raise _fail("sample_rate", "a number in (0, 1]", sample_rate)
        if not _is_real(delta) or not 0 < delta < 1:
            raise _fail("delta", "a number in (0, 1)", delta)
        if accountant not in _ACCOUNTANTS:
            raise _fail("accountant", "one of " + ", ".join(map(repr, _ACCOUNTANTS)), accountant)
        self.noise_multiplier = float(noise_multiplier)
        self.sample_rate = float(sample_rate)
        self.delta = float(delta)
        self.accountant = accountant
        self._opacus: IAccountant = _ACCOUNTANTS[accountant]()

    @classmethod
    def for_federation(
        cls,
        noise_multiplier: float,
        *,
        clients_per_round: int,
        num_clients: int,
        delta: float,
        accountant: AccountantName = "rdp",
    ) -> ClientDPAccountant:
        """Build from the federation's shape: ``sample_rate = clients_per_round / num_clients``."""
        if isinstance(num_clients, bool) or not isinstance(num_clients, int) or num_clients < 1:
            raise _fail("num_clients", "an int >= 1", num_clients)
        if (
            isinstance(clients_per_round, bool)
            or not isinstance(clients_per_round, int)
            or not 1 <= clients_per_round <= num_clients
        ):
            raise _fail("clients_per_round", f"an int in 1..{num_clients}", clients_per_round)
        return cls(noise_multiplier, clients_per_round / num_clients, delta, accountant=accountant)

    @property
    def rounds(self) -> int:
        """Rounds accounted so far (including rounds restored by :meth:`load_state_dict`)."""
        return sum(int(steps) for _, _, steps in self._opacus.history)

    def step(self, rounds: int = 1) -> None:
        """Account for ``rounds`` more rounds at this accountant's noise multiplier and rate."""
        if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
            raise _fail("rounds", "an int >= 0", rounds)
        for _ in range(rounds):
            self._opacus.step(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate)

    def get_epsilon(self, delta: float | None = None) -> float:
        """Epsilon spent so far at ``delta`` (default: the accountant's delta); 0 before round 1."""
        delta = self.delta if delta is None else delta
        if not _is_real(delta) or not 0 < delta < 1:
            raise _fail("delta", "a number in (0, 1)", delta)
        if self.rounds == 0:
            return 0.0
        return float(self._opacus.get_epsilon(delta=delta))

    @property
    def epsilon(self) -> float:
        """Epsilon spent so far at the accountant's delta."""
        return self.get_epsilon()

    def describe(self) -> dict[str, Any]:
        """Everything a report needs: configuration, rounds and epsilon."""
        return {
            "accountant": self.accountant,
            "noise_multiplier": self.noise_multiplier,
            "sample_rate": self.sample_rate,
            "delta": self.delta,
            "rounds": self.rounds,
            "epsilon": self.epsilon,
        }

    def state_dict(self) -> dict[str, Any]:
        """Plain, JSON-serializable state: configuration plus Opacus's step history."""
        return {
            "accountant": self.accountant,
            "noise_multiplier": self.noise_multiplier,
            "sample_rate": self.sample_rate,
            "delta": self.delta,
            "history": [[float(z), float(q), int(n)] for z, q, n in self._opacus.history],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the rounds already accounted (e.g. from a JSON file), to resume an audit.

        The history keeps the noise multiplier and rate of each past round, so epsilon stays
        exact even if this accountant was built with different values for future rounds.
        """
        if not isinstance(state, Mapping) or "history" not in state:
            raise _fail("state", "a dict from ClientDPAccountant.state_dict()", state)
        if state.get("accountant", self.accountant) != self.accountant:
            raise _fail("state", f"saved by a {self.accountant!r} accountant", state["accountant"])
        history = []
        for entry in state["history"]:
            try:
                z, q, n = entry
                z, q, n = float(z), float(q), int(n)
            except (TypeError, ValueError):
                raise _fail("state", "history rows [z, rate, steps]", entry) from None
            if not (z > 0 and 0 < q <= 1 and n >= 0):
                raise _fail("state", "history rows with z > 0, rate in (0, 1], steps >= 0", entry)
            history.append((z, q, n))
        if self.accountant == "gdp" and any(
            (z, q) != (self.noise_multiplier, self.sample_rate) for z, q, _ in history
        ):
            raise _fail("state", "for 'gdp' a history at this noise multiplier and rate", history)
        self._opacus.history = history

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> ClientDPAccountant:
        """Rebuild an accountant, configuration and history, from :meth:`state_dict`."""
        if not isinstance(state, Mapping):
            raise _fail("state", "a dict from ClientDPAccountant.state_dict()", state)
        missing = [k for k in ("noise_multiplier", "sample_rate", "delta") if k not in state]
        if missing:
            raise _fail("state", "a dict from ClientDPAccountant.state_dict()", sorted(state))
        acc = cls(
            state["noise_multiplier"],
            state["sample_rate"],
            state["delta"],
            accountant=state.get("accountant", "rdp"),
        )
        acc.load_state_dict(state)
        return acc

    def __repr__(self) -> str:
        return (
            f"ClientDPAccountant(noise_multiplier={self.noise_multiplier}, "
            f"sample_rate={self.sample_rate}, delta={self.delta}, "
            f"accountant={self.accountant!r}, rounds={self.rounds})"
        )
