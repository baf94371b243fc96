"""Start a local cluster; run a chain and a tree of tasks, an actor, and a parallel prime count.

Run it with ``python -m rayjupyter.examples.quickstart``; no configuration needed.
"""

from __future__ import annotations

import time

import rayjupyter as rj


@rj.remote
def add(a: int, b: int) -> int:
    return a + b


class Tally:
    def __init__(self) -> None:
        self.value = 0

    def increment(self) -> int:
        self.value += 1
        return self.value


# rj.remote called, not used as a class decorator: a type checker keeps a decorated
# class's own type, which has no .remote()
Counter = rj.remote(Tally)


def count_primes_sum(limit: int) -> int:
    sieve = bytearray([1]) * limit
    sieve[:2] = b"\x00\x00"
    for i in range(2, int(limit**0.5) + 1):
        if sieve[i]:
            sieve[i * i :: i] = bytearray(len(range(i * i, limit, i)))
    return sum(i for i in range(limit) if sieve[i])


sum_primes = rj.remote(count_primes_sum)


def main() -> None:
    started = time.perf_counter()
    context = rj.init()
    print(f"local cluster at {context.address} with {rj.cluster_resources()}")

    chain = rj.put(0)
    for i in range(1, 11):
        chain = add.remote(chain, i)
    print("chain: 0 + 1 + ... + 10 =", rj.get(chain))

    leaves = [rj.put(i) for i in range(16)]
    while len(leaves) > 1:
        leaves = [add.remote(a, b) for a, b in zip(leaves[::2], leaves[1::2], strict=True)]
    print("tree: sum(range(16)) =", rj.get(leaves[0]))

    counter = Counter.remote()
    calls = [counter.increment.remote() for _ in range(1000)]
    print("actor: 1000 calls, in order, last =", rj.get(calls)[-1])

    t0 = time.perf_counter()
    expected = [count_primes_sum(2_000_000) for _ in range(8)]
    sequential = time.perf_counter() - t0
    t0 = time.perf_counter()
    totals = rj.get([sum_primes.remote(2_000_000) for _ in range(8)])
    parallel = time.perf_counter() - t0
    assert totals == expected
    print(
        f"8 x sum of primes below 2,000,000 = {totals[0]}: {sequential:.2f} s here, "
        f"{parallel:.2f} s on the cluster ({sequential / parallel:.1f}x)"
    )

    rj.shutdown()
    print(f"done in {time.perf_counter() - started:.2f} s")


if __name__ == "__main__":
    main()
