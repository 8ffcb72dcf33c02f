"""KVStore: the engine that asks a policy and applies its decisions to the block index.

It is the only place where a Python policy's answers change state, so the checks live here: a
policy that names a tier out of range, or a victim that is pinned or not in the tier, gets a
PolicyError naming the policy. Data movements (promotions, demotions, drops) are recorded when
asked, so a serving engine can charge them on the fabric.

Why a mirror: a C call costs about as much as a whole Python policy decision, so the engine does
not call C per block. It keeps `_where` (key -> (tier, bytes) of every resident block) and the
tiers' usage in Python, queues its changes (touch, insert, remove, move) and applies them in one
`cxl_index_apply` call per few thousand operations. The C index stays the authority: it is exact
after every `flush()`, and it rejects any queued change that disagrees with its state (which can
only happen if something changed the index behind this engine's back), so the mirror cannot drift
silently. Built-in policies skip all of this: they run whole streams in C (access_batch).

Cache-only replays over one tier counted in blocks skip the mirror too (`_access_by_c_runs`):
C finds each run of hits or misses of a request and applies the policy's answer, for the whole
run when the policy takes runs (admit_many, hit_many), else one block at a time. Once the policy
answers per run or per block anyway, a C call costs less than the mirror's bookkeeping. The
mirror is then reloaded only when the engine next reads it; the view reads C meanwhile.
"""
from __future__ import annotations

import array
import operator
from itertools import repeat

import numpy as np

from . import _core
from ._core import ffi, lib
from .errors import CxlsimError
from .index import BlockIndex, BlockInfo, IndexView, TierStats
from .policies.base import Policy

TOUCH, INSERT, REMOVE, MOVE = lib.CXL_OP_TOUCH, lib.CXL_OP_INSERT, lib.CXL_OP_REMOVE, lib.CXL_OP_MOVE
FLUSH_EVERY = 4096
# A queued change is two ints in one flat list, the key and (op | tier << 8 | bytes << 16): one
# small tuple per change and one numpy conversion per flush is the cheapest write-behind found.
_TIER_SHIFT, _SIZE_SHIFT = 8, 16
MAX_TIERS = 1 << (_SIZE_SHIFT - _TIER_SHIFT)
_GONE = (-1, 0)   # what _where.get returns for an absent key
# Longest run of misses C hands over at once: it checks a run for repeated keys pairwise (a
# repeat would hit once its first occurrence is in), and a split run decides the same.
C_MISS_RUN_MAX = 64


def _defining_class(cls: type, name: str) -> type:
    return next(c for c in cls.__mro__ if name in c.__dict__)


def _first_non_u64(values):
    for value in values:
        try:
            if 0 <= operator.index(value) < 1 << 64:
                continue
        except TypeError:
            pass
        return value
    return None


def _bad_keys_error(values) -> CxlsimError:
    return CxlsimError(f"block keys must be integers in 0..2**64-1, got "
                       f"{_first_non_u64(values)!r}")


def _check_size(nbytes: int) -> None:
    if not 0 <= nbytes <= 0xFFFFFFFF:
        raise CxlsimError(f"block sizes are limited to 0..4 GiB - 1 bytes, got {nbytes}")


class PolicyError(CxlsimError, RuntimeError):
    """A policy returned a decision the engine cannot apply."""


class StoreView(IndexView):
    """The read-only view a policy gets from a KVStore: current even between flushes. While
    runs driven from C have left the engine's mirror stale, the C index itself is current, so
    the view reads it directly rather than reload the mirror."""

    __slots__ = ("_store",)

    def __init__(self, store: "KVStore"):
        super().__init__(store.index)
        self._store = store

    def tier_of(self, key: int) -> int:
        store = self._store
        if not store._stale:
            return store._where.get(key, _GONE)[0]
        try:
            return super().tier_of(key)
        except (TypeError, OverflowError):   # not a block key: absent, as the mirror says
            return -1

    def fits(self, tier: int, nbytes: int) -> bool:
        if not 0 <= tier < self._store.n_tiers:
            return False
        return super().fits(tier, nbytes) if self._store._stale else self._store.fits(tier, nbytes)

    def bytes_of(self, key: int) -> int:
        """Size of a resident block (-1 if absent)."""
        if not self._store._stale:
            return self._store.bytes_of(key)
        try:
            return super().bytes_of(key)
        except (TypeError, OverflowError):
            return -1

    def usage(self, tier) -> tuple[int, int]:
        """(bytes used, blocks held) in the tier (an index or a name)."""
        store = self._store
        if store._stale:
            return super().usage(tier)
        tier = self._index.tier_id(tier)      # checked alike either way
        return store._used[tier], store._blocks[tier]

    def info(self, key: int) -> BlockInfo:
        self._store.flush()
        return super().info(key)

    def tier_stats(self, tier) -> TierStats:
        self._store.flush()
        return super().tier_stats(tier)


class KVStore:
    """Applies `policy` to `index`. Not thread-safe."""

    def __init__(self, index: BlockIndex, policy: Policy, record_moves: bool = False):
        self.index = index
        self.policy = policy
        self.n_tiers = len(index.tiers)
        if self.n_tiers > MAX_TIERS:
            raise CxlsimError(f"KVStore supports at most {MAX_TIERS} tiers, got {self.n_tiers}")
        self.record_moves = record_moves
        self.moves: list[tuple[int, int, int, int]] = []   # (key, src tier, dst tier, bytes)
        self.drops: list[tuple[int, int, int]] = []        # (key, tier, bytes)
        self._h = index._h
        self._pins = index.pins
        self._caps = [(t.capacity_bytes, t.capacity_blocks) for t in index.tiers]
        self._ops: list[int] = []          # queued changes, two ints each (see _TIER_SHIFT)
        self._load_mirror()
        self.view = StoreView(self)
        policy.attach(self.view)
        self._runs_allowed = self._allow_runs()
        self._hit_many = self._allowed_hit_many()
        # victims go one tier down (the base class's demote_to, not replaced on the instance)
        self._demotes_down = getattr(policy.demote_to, "__func__", None) is Policy.demote_to
        # cache-only replays over one tier counted in blocks may be driven from C
        # (_access_by_c_runs): a victim can only be dropped, one per block admitted
        cap_bytes, cap_blocks = self._caps[0]
        self._c_runs = (self.n_tiers == 1 and type(policy).place is Policy.place
                        and not cap_bytes and cap_blocks != 0)
        self._failed, self._added = ffi.new("int64_t *"), ffi.new("int64_t *")

    # ------------------------------------------------------------------ state reads
    def _load_mirror(self) -> None:
        """Read residency and usage from the C index (at start, and after a failed flush)."""
        self._where: dict[int, tuple[int, int]] = {}
        for tier in range(self.n_tiers):
            keys = self.index.tier_keys(tier)
            sizes = np.empty(len(keys), np.int64)
            _core.check(lib.cxl_index_bytes_batch(self._h, _core.ptr(keys, "uint64_t"),
                                                  _core.ptr(sizes, "int64_t"), len(keys)))
            # one shared entry per distinct size: a tier's blocks rarely differ in size, and a
            # new tuple per block made a reload of 100 k blocks 2.5x slower
            distinct, which = np.unique(sizes, return_inverse=True)
            entries = [(tier, size) for size in distinct.tolist()]
            self._where.update(zip(keys.tolist(), map(entries.__getitem__, which.tolist())))
        used = ffi.new("uint64_t[]", self.n_tiers)
        blocks = ffi.new("int64_t[]", self.n_tiers)
        lib.cxl_index_usage(self._h, used, blocks)
        self._used, self._blocks = list(used), list(blocks)
        self._stale = False

    def _sync(self) -> None:
        """Reload the mirror if runs driven from C changed the index since it was read."""
        if self._stale:
            self._load_mirror()

    def tier_of(self, key: int) -> int:
        if self._stale:                      # inline: serving engines ask once per block
            self._load_mirror()
        return self._where.get(key, _GONE)[0]

    def bytes_of(self, key: int) -> int:
        self._sync()
        entry = self._where.get(key)
        return entry[1] if entry is not None else -1

    def fits(self, tier: int, nbytes: int) -> bool:
        self._sync()
        cap_bytes, cap_blocks = self._caps[tier]
        return ((not cap_bytes or self._used[tier] + nbytes <= cap_bytes)
                and (cap_blocks < 0 or self._blocks[tier] < cap_blocks))

    # ------------------------------------------------------------------ queued changes
    def flush(self) -> None:
        """Apply queued changes to the C index; afterwards it is exact."""
        ops = self._ops
        if not ops:
            return
        # through array.array: converting the list of ints is about 40% cheaper than np.array
        try:
            flat = np.frombuffer(array.array("Q", ops), dtype=np.uint64)
        except (TypeError, OverflowError):
            raise _bad_keys_error(ops[0::2]) from None
        # clear in place: the hot loops hold self._ops.extend across policy calls, and a policy
        # may make us flush (view.info) in the middle of them
        ops.clear()
        keys, packed = flat[0::2].copy(), flat[1::2]
        codes = (packed & 0xFF).astype(np.uint8)
        tiers = ((packed >> _TIER_SHIFT) & (MAX_TIERS - 1)).astype(np.int32)
        sizes = (packed >> _SIZE_SHIFT).astype(np.uint32)
        failed = ffi.new("int64_t *")
        status = lib.cxl_index_apply(self._h, _core.ptr(codes, "uint8_t"), _core.ptr(keys, "uint64_t"),
                                     _core.ptr(tiers, "int32_t"), _core.ptr(sizes, "uint32_t"),
                                     len(keys), failed)
        if status:
            self._load_mirror()
            raise CxlsimError(f"the block index changed behind this KVStore: queued change "
                              f"{failed[0]} of {len(keys)} failed: "
                              f"{ffi.string(lib.cxl_last_error()).decode()}")

    def _queue(self, op: int, key: int, tier: int, nbytes: int = 0) -> None:
        """Queue one change (the hot paths write TOUCH, MOVE and REMOVE inline: no size to check)."""
        _check_size(nbytes)
        self._ops.extend((key, op | tier << _TIER_SHIFT | nbytes << _SIZE_SHIFT))

    def pin(self, key: int) -> None:
        self.flush()
        self.index.pin(key)

    def unpin(self, key: int) -> None:
        self.flush()
        self.index.unpin(key)

    # ------------------------------------------------------------------ decisions
    def _tier(self, tier, what: str) -> int:
        if type(tier) is not int or not 0 <= tier < self.n_tiers:
            raise PolicyError(f"policy {self.policy.name!r}: {what} returned tier {tier!r}; "
                              f"tiers are 0..{self.n_tiers - 1}")
        return tier

    def access(self, key: int, nbytes: int, pos: int = 0, parent: int | None = None) -> int:
        """One block access: the tier that hit, or -1 for a miss (the block is then inserted
        where the policy places it, unless no room can be made there)."""
        _check_size(nbytes)                  # before anything is evicted for it
        if self._stale:
            self._load_mirror()
        if len(self._ops) >= 2 * FLUSH_EVERY:
            self.flush()
        return self._access(key, self._where.get(key, _GONE)[0], nbytes, pos, parent)

    def access_many(self, keys: np.ndarray, nbytes: int, out: np.ndarray) -> None:
        """Access one request's blocks in order (pos 0.., parent = previous key); out[i] gets
        the hit tier or -1."""
        out[:] = self.access_requests(keys, (0, len(keys)), nbytes)

    def access_requests(self, keys: np.ndarray, offsets, nbytes: int) -> np.ndarray:
        """Access the blocks of consecutive requests (request r is keys[offsets[r]:offsets[r+1]])
        in order: the hit tier per access, -1 for a miss. Same decisions as calling access()
        per block, with the common steps (hit, insert, evict-and-drop) written out inline and
        runs of misses handed to the policy's admit_many when it has one: this loop is what
        pure-Python policies are measured by, so it avoids every call the contract does not
        require. With one tier counted in blocks and nothing pinned, held or recorded, C drives
        the runs instead (_access_by_c_runs)."""
        _check_size(nbytes)
        if self._c_runs and not self._pins and not self.record_moves:
            return self._access_by_c_runs(keys, offsets, nbytes)
        self._sync()
        where, ops = self._where, self._ops
        ops_extend = ops.extend
        policy = self.policy
        on_hit, place, on_insert = policy.on_hit, policy.place, policy.on_insert
        # the base class always places in tier 0: skip the call when a policy keeps it
        default_place = type(policy).place is Policy.place
        n_tiers, used, blocks, caps = self.n_tiers, self._used, self._blocks, self._caps
        runs = default_place and self._runs_allowed
        all_keys = keys.tolist()
        offsets = list(offsets) if not isinstance(offsets, np.ndarray) else offsets.tolist()
        result = []
        for lo, hi in zip(offsets, offsets[1:]):
            if len(ops) >= 2 * FLUSH_EVERY:
                self.flush()
            keylist = all_keys[lo:hi]
            n = hi - lo
            if runs:
                # where each run of misses ends: the next key resident when the request
                # arrives (an eviction during the request only splits a run, which changes
                # nothing; a key repeated within the request would, so such requests scan)
                resident = list(map(where.__contains__, keylist))
                resident.append(True)
                if len(set(keylist)) != n:
                    resident = None
            parent, pos = None, 0
            while pos < n:
                key = keylist[pos]
                entry = where.get(key)
                if entry is not None:                               # hit
                    tier = entry[0]
                    ops_extend((key, tier << _TIER_SHIFT))          # TOUCH
                    dest = on_hit(key, tier, pos, parent)
                    if dest != tier:
                        self.relocate(key, tier, self._tier(dest, "on_hit"))
                    result.append(tier)
                elif runs:                                          # a run of misses
                    if resident is not None:
                        end = resident.index(True, pos + 1)
                    else:
                        end = pos + 1
                        while end < n and keylist[end] not in where:
                            end += 1
                    run = keylist[pos:end]
                    if resident is not None or len(run) == len(set(run)):
                        self._admit_run(run, pos, parent, nbytes)
                        result.extend([-1] * len(run))
                        parent, pos = run[-1], end
                        continue
                    self._access(key, -1, nbytes, pos, parent)     # a repeated key would hit
                    result.append(-1)
                else:                                               # miss
                    if default_place:
                        dest = 0
                    else:
                        dest = place(key, nbytes, pos, parent)
                        if type(dest) is not int or not 0 <= dest < n_tiers:
                            self._tier(dest, "place")
                    cap_bytes, cap_blocks = caps[dest]
                    if (((not cap_bytes or used[dest] + nbytes <= cap_bytes)
                            and (cap_blocks < 0 or blocks[dest] < cap_blocks))
                            or self.make_room(dest, nbytes)):
                        ops_extend((key, INSERT | dest << _TIER_SHIFT | nbytes << _SIZE_SHIFT))
                        where[key] = (dest, nbytes)
                        used[dest] += nbytes
                        blocks[dest] += 1
                        on_insert(key, dest, pos, parent)
                    result.append(-1)
                parent = key
                pos += 1
        return np.array(result, np.int8)

    def _allow_runs(self) -> bool:
        """Whether runs of misses may go to the policy's admit_many: tier 0 is counted in
        blocks, its victims can only be dropped, and no subclass changed a method the
        admit_many it inherits stands in for (it would bypass the override)."""
        policy, cls = self.policy, type(self.policy)
        if policy.admit_many is None:
            return False
        owner = _defining_class(cls, "admit_many")
        if any(not issubclass(owner, _defining_class(cls, name))
               for name in ("victim", "on_insert", "on_remove", "place", "demote_to")):
            return False
        drop_only = self.n_tiers == 1 or (cls.demote_to is Policy.demote_to
                                          and not policy.demote_on_evict)
        cap_bytes, cap_blocks = self._caps[0]
        return drop_only and not cap_bytes and cap_blocks != 0

    def _allowed_hit_many(self):
        """The policy's hit_many, unless a subclass changed the on_hit it stands in for."""
        cls = type(self.policy)
        if self.policy.hit_many is None or not issubclass(_defining_class(cls, "hit_many"),
                                                          _defining_class(cls, "on_hit")):
            return None
        return self.policy.hit_many

    def _access_by_c_runs(self, keys: np.ndarray, offsets, nbytes: int) -> np.ndarray:
        """access_requests for one tier counted in blocks, with nothing pinned or held and no
        moves recorded, driven from C: the index finds each run of a request (touching hits)
        and applies the policy's answer for each run of misses (admit_many's, or the per-block
        calls one at a time), so the index is exact throughout and the mirror is reloaded only
        when the engine next reads it. A hit run goes whole to the policy's own hit_many; a
        policy without one hears of each hit alone, C touching the block just before, as the
        per-block engine would."""
        all_keys = keys.tolist()
        offsets = list(offsets) if not isinstance(offsets, np.ndarray) else offsets.tolist()
        if any(b < a for a, b in zip(offsets, offsets[1:])) or (
                offsets and not 0 <= offsets[0] <= offsets[-1] <= len(all_keys)):
            raise CxlsimError(f"request offsets must not decrease and must lie in "
                              f"0..{len(all_keys)} (the number of keys), got {offsets[:8]!r}...")
        if keys.dtype != np.uint64 and _first_non_u64(all_keys) is not None:
            raise _bad_keys_error(all_keys)       # negative or fractional keys must not wrap
        keys = np.ascontiguousarray(keys, dtype=np.uint64)
        self.flush()
        self._stale = True
        h, policy = self._h, self.policy
        admit_many = policy.admit_many if self._runs_allowed else None
        hit_many = self._hit_many or policy.hit_by_block
        max_hit = len(all_keys) if self._hit_many else 1
        next_run = lib.cxl_index_next_run
        keys_ptr = _core.ptr(keys, "uint64_t")
        out = np.full(len(keys), -1, np.int8)
        out_ptr = _core.ptr(out, "int8_t")
        cap_blocks = self._caps[0][1]
        tier_out = ffi.new("int32_t *")
        used, blocks = ffi.new("uint64_t[1]"), ffi.new("int64_t[1]")
        lib.cxl_index_usage(h, used, blocks)
        resident = blocks[0]                      # blocks in the tier, kept up to date here
        for lo, hi in zip(offsets, offsets[1:]):
            pos, parent = lo, None
            while pos < hi:
                end = next_run(h, keys_ptr, out_ptr, pos, hi, C_MISS_RUN_MAX, max_hit, tier_out)
                run = all_keys[pos:end]
                if tier_out[0] < 0:
                    free = end - pos if cap_blocks < 0 else cap_blocks - resident
                    if admit_many is None:
                        resident += self._misses_by_block_in_c(run, pos - lo, parent, nbytes, free)
                    else:
                        victims = admit_many(0, run, pos - lo, parent, free)
                        resident += self._admit_in_c(keys_ptr, pos, run, nbytes, free, victims)
                else:
                    stop = hit_many(0, run, pos - lo, parent)
                    if stop is not None:          # with one tier every hit stays where it is
                        self._refuse_move(run, stop)
                parent, pos = run[-1], end
        return out[offsets[0]:offsets[-1]] if offsets else out[:0]

    def _misses_by_block_in_c(self, run: list[int], first_pos: int, parent, nbytes: int,
                              free: int) -> int:
        """A run of misses for a policy without admit_many: the per-block calls (victim,
        on_remove, on_insert), each change applied to C at once so the view stays exact.
        Returns the number of blocks the tier gained."""
        policy, h = self.policy, self._h
        victim_of, on_remove, on_insert = policy.victim, policy.on_remove, policy.on_insert
        remove, insert = lib.cxl_index_remove_from, lib.cxl_index_insert
        added = 0
        for pos, key in enumerate(run, first_pos):
            if free > 0:
                free -= 1
            else:
                try:
                    victim = victim_of(0)
                except LookupError:            # everything pinned: the block is not cached
                    parent = key
                    continue
                try:
                    refused = remove(h, victim, 0)
                except (TypeError, OverflowError):
                    refused = True
                if refused:
                    self._bad_victim(0, victim)
                on_remove(victim, 0)
                added -= 1
            _core.check(insert(h, key, 0, nbytes, -1))
            on_insert(key, 0, pos, parent)
            added += 1
            parent = key
        return added

    def _refuse_move(self, run: list[int], stop) -> None:
        try:
            i, dest = stop
            key = run[i]
        except (TypeError, ValueError, IndexError):
            raise PolicyError(f"policy {self.policy.name!r}: hit_many returned {stop!r}; "
                              f"expected None or (index in the run, tier)") from None
        if dest == 0:
            raise PolicyError(f"policy {self.policy.name!r}: hit_many stopped at block {key}, "
                              f"which stays in tier 0 (it may stop only where on_hit moves one)")
        raise PolicyError(f"policy {self.policy.name!r}: on_hit returned tier {dest!r} for "
                          f"block {key}; the index has one tier (0)")

    def _admit_in_c(self, keys_ptr, pos: int, run: list[int], nbytes: int, free: int,
                    victims) -> int:
        """Check admit_many's answer and apply it to the C index (cxl_index_admit_run).
        Returns the number of blocks the tier gained."""
        need = len(run) - free if len(run) > free else 0
        if len(victims) != need:
            word = "fewer" if len(victims) < need else "more"
            raise PolicyError(f"policy {self.policy.name!r}: admit_many returned {len(victims)} "
                              f"victims, {word} than the run needs ({need})")
        skip = ffi.NULL
        if type(victims) is not list or None in victims:
            # None: every block pinned, that key is not cached; numpy ints and the like become
            # Python ints, which is what cffi converts
            skip = [v is None for v in victims]
            try:
                victims = [0 if v is None else operator.index(v) for v in victims]
            except TypeError:
                victims = list(victims)           # named below
        failed, added = self._failed, self._added
        try:
            status = lib.cxl_index_admit_run(self._h, 0, keys_ptr, pos, len(run), nbytes, free,
                                             victims, skip, need, failed, added)
        except (TypeError, OverflowError):
            raise PolicyError(f"policy {self.policy.name!r}: admit_many returned victims that "
                              f"are not block keys: {_first_non_u64(victims)!r}") from None
        if status:
            if status == lib.CXL_EPINNED or failed[0] >= 0:
                state = "pinned" if status == lib.CXL_EPINNED else "not in that tier"
                raise PolicyError(f"policy {self.policy.name!r}: admit_many returned block "
                                  f"{victims[failed[0]]!r}, which is {state}")
            _core.check(status)
        return added[0]

    def _admit_run(self, run: list[int], first_pos: int, parent, nbytes: int) -> None:
        """Apply a run of misses to tier 0 through policy.admit_many, checking every victim."""
        cap_blocks, n = self._caps[0][1], len(run)
        free = n if cap_blocks < 0 else cap_blocks - self._blocks[0]
        victims = self.policy.admit_many(0, run, first_pos, parent, free)
        entry = (0, nbytes)
        if not self._apply_plain_run(run, victims, max(n - free, 0), entry):
            self._apply_run_by_block(run, victims, free, entry)

    def _apply_plain_run(self, run, victims, need: int, entry) -> bool:
        """The common run, applied with whole-list operations: every block the same size, one
        victim per key past the free slots, all of them distinct, resident in tier 0 before the
        run (none of the run's own keys) and unpinned. False, with nothing changed, otherwise."""
        where = self._where
        if len(victims) != need:
            return False
        if need:
            pins = self._pins
            if pins and not pins.keys().isdisjoint(victims):
                return False
            entries = list(map(where.pop, victims, repeat(None)))
            if entries.count(entry) != need:      # absent, another tier or size, or repeated
                for victim, old in zip(victims, entries):
                    if old is not None:
                        where[victim] = old
                return False
            if self.record_moves:
                self.drops.extend((victim, 0, entry[1]) for victim in victims)
        where.update(dict.fromkeys(run, entry))
        # the queued changes: every victim's REMOVE, then every key's INSERT
        changes = [REMOVE] * (2 * need) + [INSERT | entry[1] << _SIZE_SHIFT] * (2 * len(run))
        changes[0:2 * need:2] = victims
        changes[2 * need::2] = run
        self._ops.extend(changes)
        added = len(run) - need
        self._blocks[0] += added
        self._used[0] += added * entry[1]
        return True

    def _apply_run_by_block(self, run, victims, free: int, entry) -> None:
        """Any other run (pins, victims from the run itself, none found): key by key."""
        where, pins, ops_extend = self._where, self._pins, self._ops.extend
        blocks, used, nbytes = self._blocks, self._used, entry[1]
        insert_code = INSERT | nbytes << _SIZE_SHIFT
        drops = self.drops if self.record_moves else None
        n_victims, used_victims = len(victims), 0
        for key in run:
            if free > 0:
                free -= 1
            else:
                if used_victims == n_victims:
                    raise PolicyError(f"policy {self.policy.name!r}: admit_many returned "
                                      f"{n_victims} victims, fewer than the run needs")
                victim = victims[used_victims]
                used_victims += 1
                if victim is None:                 # everything pinned: the key is not cached
                    continue
                ventry = where.get(victim)
                if victim in pins or ventry is None or ventry[0] != 0:
                    self._bad_victim(0, victim)
                del where[victim]
                ops_extend((victim, REMOVE))
                used[0] -= ventry[1]
                blocks[0] -= 1
                if drops is not None:
                    drops.append((victim, 0, ventry[1]))
            where[key] = entry
            ops_extend((key, insert_code))
            used[0] += nbytes
            blocks[0] += 1
        if used_victims != n_victims:
            raise PolicyError(f"policy {self.policy.name!r}: admit_many returned "
                              f"{n_victims} victims, more than the run needs ({used_victims})")

    def _access(self, key: int, tier: int, nbytes: int, pos: int, parent) -> int:
        policy = self.policy
        if tier >= 0:
            self._ops.extend((key, tier << _TIER_SHIFT))            # TOUCH
            dest = policy.on_hit(key, tier, pos, parent)
            if dest != tier:
                self.relocate(key, tier, self._tier(dest, "on_hit"))
            return tier
        dest = policy.place(key, nbytes, pos, parent)
        if type(dest) is not int or not 0 <= dest < self.n_tiers:
            self._tier(dest, "place")
        if self.make_room(dest, nbytes):
            self._queue(INSERT, key, dest, nbytes)
            self._where[key] = (dest, nbytes)
            self._used[dest] += nbytes
            self._blocks[dest] += 1
            policy.on_insert(key, dest, pos, parent)
        return -1

    def relocate(self, key: int, src: int, dst: int) -> bool:
        """Move a resident block, making room at dst while the block is held where it is
        (unless it moves down with the base demote_to: room made below never reaches it)."""
        if self._stale:                      # inline: this and make_room recurse per victim
            self._load_mirror()
        nbytes = self._where[key][1]
        if dst > src and self._demotes_down:
            # room made below cascades further down only: src, and the block, stay out of it
            ok = self.make_room(dst, nbytes)
        else:
            pins = self._pins
            pins[key] = pins.get(key, 0) + 1  # held: policies must not pick it while room is made
            try:
                ok = self.make_room(dst, nbytes)
            finally:
                if pins[key] == 1:
                    del pins[key]
                else:
                    pins[key] -= 1
        if not ok:
            return False
        self._ops.extend((key, MOVE | dst << _TIER_SHIFT))
        self._where[key] = (dst, nbytes)
        self._used[src] -= nbytes
        self._blocks[src] -= 1
        self._used[dst] += nbytes
        self._blocks[dst] += 1
        if self.record_moves:
            self.moves.append((key, src, dst, nbytes))
        self.policy.on_move(key, src, dst)
        return True

    def _bad_victim(self, tier: int, victim) -> None:
        state = "pinned" if victim in self._pins else "not in that tier"
        raise PolicyError(f"policy {self.policy.name!r}: victim({tier}) returned block "
                          f"{victim!r}, which is {state}")

    def make_room(self, tier: int, nbytes: int) -> bool:
        """Evict from `tier` until nbytes fit; False if the policy cannot free enough."""
        if self._stale:
            self._load_mirror()
        cap_bytes, cap_blocks = self._caps[tier]
        used, blocks = self._used, self._blocks
        if ((not cap_bytes or used[tier] + nbytes <= cap_bytes)
                and (cap_blocks < 0 or blocks[tier] < cap_blocks)):
            return True
        if (cap_bytes and nbytes > cap_bytes) or cap_blocks == 0:
            return False
        policy, pins, where = self.policy, self._pins, self._where
        n_tiers = self.n_tiers
        can_demote = n_tiers > 1               # with one tier a victim can only leave
        while not ((not cap_bytes or used[tier] + nbytes <= cap_bytes)
                   and (cap_blocks < 0 or blocks[tier] < cap_blocks)):
            try:
                victim = policy.victim(tier)
            except LookupError:
                return False   # everything pinned
            entry = where.get(victim)
            if victim in pins or entry is None or entry[0] != tier:
                self._bad_victim(tier, victim)
            if can_demote:
                dest = policy.demote_to(victim, tier)
                if dest is not None and (type(dest) is not int or not 0 <= dest < n_tiers):
                    self._tier(dest, "demote_to")
                if dest is not None and self.relocate(victim, tier, dest):
                    continue
            vbytes = entry[1]
            self._ops.extend((victim, REMOVE | tier << _TIER_SHIFT))
            del where[victim]
            used[tier] -= vbytes
            blocks[tier] -= 1
            if self.record_moves:
                self.drops.append((victim, tier, vbytes))
            policy.on_remove(victim, tier)
        return True

    # ------------------------------------------------------------------ serving-engine helpers
    # A serving engine needs three things a cache simulator does not: to guard a request's blocks
    # while it admits them (before pinning them in C, which needs a flush per block), to put a
    # block into a given tier whatever place() says (KV a request needs in HBM to run), and to
    # free such a block when the request ends without it counting as an eviction.
    def hold(self, key: int) -> None:
        """Keep `key` from being chosen as a victim until release(key); no C call."""
        pins = self._pins
        pins[key] = pins.get(key, 0) + 1

    def release(self, key: int) -> None:
        pins = self._pins
        if pins[key] == 1:
            del pins[key]
        else:
            pins[key] -= 1

    def insert(self, key: int, tier: int, nbytes: int) -> bool:
        """Insert an absent block into `tier`, making room there; False if no room can be made."""
        self._tier(tier, "insert")
        _check_size(nbytes)
        self._sync()
        if key in self._where:
            raise CxlsimError(f"insert: block {key} is already resident")
        if not self.make_room(tier, nbytes):
            return False
        self._queue(INSERT, key, tier, nbytes)
        self._where[key] = (tier, nbytes)
        self._used[tier] += nbytes
        self._blocks[tier] += 1
        self.policy.on_insert(key, tier, 0, None)
        return True

    def discard(self, key: int) -> None:
        """Remove an unpinned resident block (not a victim, not recorded as a drop)."""
        self._sync()
        tier, nbytes = self._where.pop(key)
        if key in self._pins:
            self._where[key] = (tier, nbytes)
            raise CxlsimError(f"discard: block {key} is pinned")
        self._queue(REMOVE, key, tier)
        self._used[tier] -= nbytes
        self._blocks[tier] -= 1
        self.policy.on_remove(key, tier)
