"""Nodal analysis of a passive crossbar (physics.md §5.3): line resistance, sinh I-V, sneak paths.

Network. Device (i, j) joins word-line node WL(i, j) and bit-line node BL(i, j). With a line
resistance r_line > 0, neighbouring nodes of a line are joined by 1/r_line (2*rows*cols nodes);
with r_line == 0 each line collapses to one node (rows + cols nodes). Word lines are driven from
their left end WL(i, 0), bit lines from their bottom end BL(rows-1, j), each through r_source to
its source voltage; with r_source == 0 that end node is held at the source voltage (a Dirichlet
node). A NaN source voltage is a floating line: nothing is attached to its end.

Devices are linear (I = G*V, when v_nl is None) or follow I = G * s * sinh(V/Vnl) with
s = v_ref / sinh(v_ref/Vnl), so that I(v_ref) = G*v_ref exactly.

Solving. The line part of the conductance matrix is precomputed per drive pattern (which lines
float); device conductances are stamped into a dense copy at each solve. `solve` runs Newton
with the companion model g_d = dI/dV (3-6 iterations). `grounded_column_currents` solves all row
drives of a grounded read at once: one Cholesky factor of the matrix linearised at the read
voltage, reused for every right-hand side and every (chord) iteration, because in a grounded read
every device sits near 0 V or near the read voltage, where the true slope differs from the chord
by about 2 %.

Line faults (`faults`, simulator.config.LineFault): an open `at` k > 0 removes the line segment
k crosspoints from the driven end (needs r_line > 0); an open at 0 cuts the line off its driver,
so it floats whatever it is driven with (its end current is 0); a short joins two line nodes
through its resistance. A faulty network is always solved in full (`solve`): the grounded-read
shortcuts below assume intact lines.

Grounded reads are normally not factorised at all (`_fixed_point`): with every line
driven, the bare lines have a closed-form response (transfer resistances of a chain), and the
device voltages follow from a contraction mapping in a few 8x8 matrix products (~30 us for a
single 8x8 read instead of ~0.2-0.3 ms). The factorised solve remains the fallback and the
reference in the tests.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np
from scipy import linalg, sparse
from scipy.sparse import linalg as splinalg

from simulator.errors import SimulatorError

_MAX_ITER = 60
_ATOL_V = 1e-11      # convergence on node-voltage updates [V]
# ... or on the current residual [A]: with floating lines behind nearly insulating devices
# (unformed, ~1e-8 S) the updates stall at round-off (~1e-10 V) once the residual is ~1e-16 A
_ATOL_I = 1e-14
_MAX_STEP_V = 0.5    # Newton damping: largest node-voltage change per iteration [V]
# above this many nodes the (banded, very sparse) system goes to SuperLU instead of dense Cholesky
_DENSE_MAX_NODES = 600

# These systems are small (128 unknowns for 8x8): threaded BLAS only adds synchronisation, and on
# a loaded 2-core machine it made a read map ~500x slower (0.26 ms -> 130 ms). When threadpoolctl
# is installed, each solve runs with BLAS limited to one thread (~6 us per call); nothing is set
# globally. Without it, set OPENBLAS_NUM_THREADS=1 yourself for full speed (docs/simulator.md).
_controller = None


def _single_thread():
    global _controller
    if _controller is None:
        try:
            from threadpoolctl import ThreadpoolController

            _controller = ThreadpoolController()
        except ImportError:
            _controller = False
    if _controller is False:
        return contextlib.nullcontext()
    return _controller.limit(limits=1, user_api="blas")


@dataclass
class NodalResult:
    row_currents: np.ndarray    # [A] into the array at each word-line end (0 if floating)
    col_currents: np.ndarray    # [A] into the array at each bit-line end (0 if floating)
    device_voltages: np.ndarray  # [V] V_WL - V_BL across each device, shape (rows, cols)
    iterations: int
    nodes: np.ndarray | None = None  # [V] every node's potential (a warm start for `solve`)


@dataclass
class _Pattern:
    L: np.ndarray          # line + source conductances over all nodes [S]
    free: np.ndarray       # indices of unknown nodes
    fixed: np.ndarray      # indices of Dirichlet nodes (driven ends when r_source == 0)
    all_free: bool
    chol_ready: bool = False


class NodalSolver:
    """Solver for one crossbar geometry and wiring; reusable across conductance states."""

    def __init__(self, rows: int, cols: int, r_line: float, r_source: float,
                 v_nl: float | None = 0.81, v_ref: float = 0.2, faults=()):
        if rows < 1 or cols < 1:
            raise SimulatorError(f"crossbar must be at least 1x1, got {rows}x{cols}")
        if r_line < 0 or r_source < 0:
            raise SimulatorError("line and source resistances must be >= 0")
        self.rows, self.cols = int(rows), int(cols)
        self.r_line, self.r_source = float(r_line), float(r_source)
        self.v_nl = None if v_nl is None else float(v_nl)
        self.v_ref = float(v_ref)
        self.s = 1.0 if self.v_nl is None else self.v_ref / math.sinh(self.v_ref / self.v_nl)
        m, n = self.rows, self.cols
        ii, jj = np.meshgrid(np.arange(m), np.arange(n), indexing="ij")
        if self.r_line > 0:
            N = 2 * m * n
            a = (ii * n + jj).ravel()
            b = (m * n + ii * n + jj).ravel()
            self.row_end = np.arange(m) * n                      # WL(i, 0)
            self.col_end = m * n + (m - 1) * n + np.arange(n)    # BL(m-1, j)
        else:
            N = m + n
            a = ii.ravel().copy()
            b = (m + jj).ravel()
            self.row_end = np.arange(m)
            self.col_end = m + np.arange(n)
        self.N = N
        self.a, self.b = a, b
        self.dense = N <= _DENSE_MAX_NODES
        rr, cc, vv = [], [], []
        if self.r_line > 0:
            gl = 1.0 / self.r_line
            wl = (ii[:, :-1] * n + jj[:, :-1]).ravel()             # WL(i,j)-WL(i,j+1)
            bl = (m * n + ii[:-1, :] * n + jj[:-1, :]).ravel()     # BL(i,j)-BL(i+1,j)
            for u, w in ((wl, wl + 1), (bl, bl + n)):
                one = np.full(u.size, gl)
                rr += [u, w, u, w]
                cc += [u, w, w, u]
                vv += [one, one, -one, -one]
        self.cut_rows = np.zeros(m, dtype=bool)
        self.cut_cols = np.zeros(n, dtype=bool)
        for u, w, g in self._fault_links(faults):
            rr += [np.array([u, w, u, w])]
            cc += [np.array([u, w, w, u])]
            vv += [np.array([g, g, -g, -g])]
        self.faulty = bool(len(faults))
        if rr:
            L = sparse.coo_matrix((np.concatenate(vv), (np.concatenate(rr), np.concatenate(cc))),
                                  shape=(N, N)).tocsr()
        else:
            L = sparse.csr_matrix((N, N))
        # incidence: current of device k leaves node a_k and enters node b_k
        k = np.arange(m * n)
        Dt = sparse.coo_matrix((np.r_[np.ones(m * n), -np.ones(m * n)], (np.r_[a, b], np.r_[k, k])),
                               shape=(N, m * n)).tocsr()
        self.L_lines = L.toarray() if self.dense else L
        self.Dt = Dt.toarray() if self.dense else Dt
        self.diag = np.arange(N) * (N + 1)
        self.ab = a * N + b
        self.ba = b * N + a
        self._patterns: dict[bytes, _Pattern] = {}
        self._tr: tuple[np.ndarray, np.ndarray, np.ndarray | None] | None = None

    # -- line faults ---------------------------------------------------------------------------
    def _node(self, kind: str, index: int, pos: int) -> int:
        """Node of line (kind, index) `pos` crosspoints from its driven end."""
        m, n = self.rows, self.cols
        if self.r_line == 0:
            return index if kind == "row" else m + index
        if kind == "row":
            return index * n + pos
        return m * n + (m - 1 - pos) * n + index

    def _fault_links(self, faults) -> list[tuple[int, int, float]]:
        """(node, node, conductance) to add for the faults; marks lines cut at their end."""
        out = []
        for f in faults:
            kind, i = f.line
            if f.kind == "open":
                if f.at == 0:
                    (self.cut_rows if kind == "row" else self.cut_cols)[i] = True
                    continue
                if self.r_line == 0:
                    raise SimulatorError("an open inside a line needs r_line > 0 (with r_line = 0 "
                                         "a line is one node)")
                # remove the segment between positions at-1 and at
                out.append((self._node(kind, i, f.at - 1), self._node(kind, i, f.at),
                            -1.0 / self.r_line))
                continue
            okind, j = f.other
            if kind != okind:  # a row and a column: at their crossing
                r, c = (i, j) if kind == "row" else (j, i)
                out.append((self._node("row", r, c), self._node("col", c, self.rows - 1 - r),
                            1.0 / f.ohms))
            else:
                out.append((self._node(kind, i, f.at), self._node(kind, j, f.at), 1.0 / f.ohms))
        return out

    # -- building blocks -----------------------------------------------------------------------
    def _pattern(self, row_driven: np.ndarray, col_driven: np.ndarray) -> _Pattern:
        key = np.concatenate([row_driven, col_driven]).tobytes()
        pat = self._patterns.get(key)
        if pat is not None:
            return pat
        if not (row_driven.any() or col_driven.any()):
            raise SimulatorError("nodal solve needs at least one driven line (all are floating)")
        ends = np.concatenate([self.row_end[row_driven], self.col_end[col_driven]])
        add = np.zeros(self.N)
        if self.r_source > 0:
            add[ends] = 1.0 / self.r_source
            fixed = np.zeros(0, dtype=int)
        else:
            fixed = ends
        L = self.L_lines + (np.diag(add) if self.dense else sparse.diags(add, format="csr"))
        free = np.setdiff1d(np.arange(self.N), fixed)
        pat = _Pattern(L=L, free=free, fixed=fixed, all_free=fixed.size == 0)
        self._patterns[key] = pat
        return pat

    def _iv(self, g: np.ndarray, vd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Device currents and slopes (companion conductances) at device voltages vd."""
        if self.v_nl is None:
            return g * vd, g if vd.ndim == 1 else np.broadcast_to(g, vd.shape)
        x = vd / self.v_nl
        return (g * self.s) * np.sinh(x), (g * (self.s / self.v_nl)) * np.cosh(x)

    def _factor(self, pat: _Pattern, gd: np.ndarray):
        """Factor the system matrix (lines + devices with conductances gd) on the free nodes;
        returns a function solving it for one or several right-hand sides."""
        if self.dense:
            J = self._stamp(pat.L, gd)
            if not pat.all_free:
                J = J[np.ix_(pat.free, pat.free)]
            cho = linalg.cho_factor(J, check_finite=False)
            return lambda rhs: linalg.cho_solve(cho, rhs, check_finite=False)
        J = (pat.L + self.Dt @ sparse.diags(gd) @ self.Dt.T).tocsc()
        if not pat.all_free:
            J = J[pat.free][:, pat.free].tocsc()
        lu = splinalg.splu(J)
        return lu.solve

    def _stamp(self, L: np.ndarray, gd: np.ndarray) -> np.ndarray:
        J = L.copy()
        N = self.N
        flat = J.reshape(-1)
        flat[self.diag] += np.bincount(self.a, gd, N) + np.bincount(self.b, gd, N)
        flat[self.ab] -= gd
        flat[self.ba] -= gd
        return J

    def _sources(self, row_v: np.ndarray, col_v: np.ndarray, row_driven, col_driven):
        """Source vector b (r_source > 0) and Dirichlet values (r_source == 0), over all nodes."""
        bvec = np.zeros(self.N)
        v0 = np.zeros(self.N)
        if self.r_source > 0:
            gs = 1.0 / self.r_source
            bvec[self.row_end[row_driven]] += row_v[row_driven] * gs
            bvec[self.col_end[col_driven]] += col_v[col_driven] * gs
        else:
            v0[self.row_end[row_driven]] = row_v[row_driven]
            v0[self.col_end[col_driven]] = col_v[col_driven]
        return bvec, v0

    def _check_g(self, G) -> np.ndarray:
        g = np.asarray(G, dtype=float)
        if g.shape != (self.rows, self.cols):
            raise SimulatorError(f"conductance map has shape {g.shape}, "
                                 f"expected {(self.rows, self.cols)}")
        return g.ravel()

    # -- general solve (any bias, floating lines) ------------------------------------------------
    def solve(self, G, row_v, col_v, start: NodalResult | None = None) -> NodalResult:
        """Solve one bias: row_v (rows,), col_v (cols,) source voltages [V], NaN = floating.
        `start`: a solution of a nearby bias whose node potentials start the Newton iteration
        (the DC operating points of a sweep; same tolerance, fewer iterations)."""
        with _single_thread():
            return self._solve(G, row_v, col_v, start)

    def _solve(self, G, row_v, col_v, start: NodalResult | None = None) -> NodalResult:
        g = self._check_g(G)
        row_v = np.asarray(row_v, dtype=float).reshape(self.rows)
        col_v = np.asarray(col_v, dtype=float).reshape(self.cols)
        if self.faulty:  # a line cut off its driver floats, whatever drives it
            row_v = np.where(self.cut_rows, np.nan, row_v)
            col_v = np.where(self.cut_cols, np.nan, col_v)
        row_driven, col_driven = ~np.isnan(row_v), ~np.isnan(col_v)
        pat = self._pattern(row_driven, col_driven)
        bvec, v = self._sources(row_v, col_v, row_driven, col_driven)
        if start is not None and start.nodes is not None and start.nodes.shape == v.shape:
            v[pat.free] = start.nodes[pat.free]
        it = 0
        for _ in range(_MAX_ITER):
            it += 1
            vd = v[self.a] - v[self.b]
            i_dev, gd = self._iv(g, vd)
            if pat.free.size == 0:
                break
            F = pat.L @ v - bvec + self.Dt @ i_dev
            if self.v_nl is not None and it > 1 and np.max(np.abs(
                    F if pat.all_free else F[pat.free])) < _ATOL_I:
                break
            dv = self._factor(pat, gd)(-F if pat.all_free else -F[pat.free])
            big = np.max(np.abs(dv))
            if self.v_nl is not None and big > _MAX_STEP_V:
                dv *= _MAX_STEP_V / big
            v[pat.free] += dv
            if self.v_nl is None or big < _ATOL_V:
                break
        else:
            raise SimulatorError(f"nodal Newton solve did not converge in {_MAX_ITER} iterations")
        vd = v[self.a] - v[self.b]
        i_dev, _ = self._iv(g, vd)
        return NodalResult(*self._end_currents(pat, v[:, None], i_dev[:, None], row_v[:, None],
                                               col_v[:, None], row_driven, col_driven),
                           device_voltages=vd.reshape(self.rows, self.cols), iterations=it,
                           nodes=v)

    def _end_currents(self, pat, V, cur, row_v, col_v, row_driven, col_driven):
        """Currents into the array at driven line ends; V (N,k), cur (ndev,k), sources (.., k)."""
        k = V.shape[1]
        rc = np.zeros((self.rows, k))
        cc = np.zeros((self.cols, k))
        if self.r_source > 0:
            gs = 1.0 / self.r_source
            rc[row_driven] = (row_v[row_driven] - V[self.row_end[row_driven]]) * gs
            cc[col_driven] = (col_v[col_driven] - V[self.col_end[col_driven]]) * gs
        else:
            # KCL at the held node: what the source pushes in is what leaves into the network
            net = self.L_lines @ V + self.Dt @ cur
            rc[row_driven] = net[self.row_end[row_driven]]
            cc[col_driven] = net[self.col_end[col_driven]]
        return (rc[:, 0], cc[:, 0]) if k == 1 else (rc, cc)

    # -- grounded reads, all row drives at once ----------------------------------------------
    def grounded_column_currents(self, G, volts: float, rows=None,
                                 method: str = "auto") -> np.ndarray:
        """Currents [A] sensed out of every bit line when one word line is at `volts` and all
        other lines at 0 V (grounded scheme); one row of the result per driven word line.

        `rows` selects the driven word lines (default: all), result shape (len(rows), cols).
        `method`: "fixed_point" (closed-form line response, see `_fixed_point`),
        "factor" (Cholesky of the full nodal matrix, chord iterations) or "auto" (fixed point
        unless its contraction bound is weak, e.g. large arrays with high line resistance).
        Both solve the same network to the same tolerance.
        """
        g = self._check_g(G)
        m, n = self.rows, self.cols
        rows = np.arange(m) if rows is None else np.atleast_1d(np.asarray(rows, dtype=int))
        if self.faulty:
            return self._grounded_by_solve(g, volts, rows)
        if self.r_line == 0 and self.r_source == 0:
            # fast path: every device sees exactly its line voltages
            gi = g.reshape(m, n)[rows]
            return self._iv(gi, np.full_like(gi, volts))[0]
        return self._driven(g, _one_hot(m, rows, volts), method)[1]

    def readout_currents(self, G, row_v, method: str = "auto") -> tuple[np.ndarray, np.ndarray]:
        """Every word line i driven at row_v[a, i] [V] and every bit line held at 0 V (virtual
        ground), for each drive pattern a of row_v (k, rows): returns (row currents (k, rows)
        [A] flowing into the array at each word-line end, column currents (k, cols) [A]
        flowing out of the array into each bit line's virtual ground). A grounded read is the
        pattern with one row at the read voltage; an analog vector-matrix product is any
        pattern. `method` as in `grounded_column_currents`.
        """
        g = self._check_g(G)
        row_v = np.asarray(row_v, dtype=float)
        if row_v.ndim != 2 or row_v.shape[1] != self.rows:
            raise SimulatorError(f"row voltages of shape {row_v.shape}, expected (k, {self.rows})")
        if not np.all(np.isfinite(row_v)):
            raise SimulatorError("row voltages must be finite (every line is driven)")
        if self.faulty:  # the shortcuts assume intact lines: one full solve per pattern
            G = g.reshape(self.rows, self.cols)
            zero = np.zeros(self.cols)
            res = [self.solve(G, v, zero) for v in row_v]
            return (np.array([r.row_currents for r in res]),
                    -np.array([r.col_currents for r in res]))
        return self._driven(g, row_v, method)

    def _driven(self, g: np.ndarray, row_v: np.ndarray,
                method: str) -> tuple[np.ndarray, np.ndarray]:
        m, n = self.rows, self.cols
        if self.r_line == 0 and self.r_source == 0:
            # every device sees exactly its line voltages
            cur = self._iv(g.reshape(m, n), np.repeat(row_v[:, :, None], n, axis=2))[0]
            return cur.sum(axis=2), cur.sum(axis=1)
        if method not in ("auto", "fixed_point", "factor"):
            raise SimulatorError(f"unknown grounded-read method {method!r}")
        if method != "factor":
            cur = self._row_fixed_point(g, row_v)
            if cur is not None:
                # all current of a word line enters at its driven end, all current entering
                # a bit line leaves through its sense end
                return cur.sum(axis=2), cur.sum(axis=1)
            if method == "fixed_point":
                raise SimulatorError("grounded read: the line network is too resistive for the "
                                     "fixed-point solve (contraction bound >= 0.5)")
        with _single_thread():
            return self._factored(g, row_v)

    def grounded_row_currents(self, G, volts: float, row: int) -> np.ndarray:
        """Currents [A] sensed out of every bit line with word line `row` at `volts` and every
        other line at 0 V: `grounded_column_currents(G, volts, [row])[0]` with less overhead
        (the path of every single verify read)."""
        if self.faulty:
            return self._grounded_by_solve(self._check_g(G), volts, np.array([row]))[0]
        if self.r_line == 0 and self.r_source == 0:
            g = np.asarray(G, dtype=float)[row]
            return self._iv(g, np.full_like(g, volts))[0]
        g = self._check_g(G)
        row_v = _one_hot(self.rows, np.array([row]), volts)
        cur = self._row_fixed_point(g, row_v, abs(volts))
        if cur is not None:
            return cur[0].sum(axis=0)
        with _single_thread():
            return self._factored(g, row_v)[1][0]

    def _grounded_by_solve(self, g: np.ndarray, volts: float, rows: np.ndarray) -> np.ndarray:
        """Grounded read of a faulty network: one full solve per driven word line."""
        out = np.zeros((rows.size, self.cols))
        G = g.reshape(self.rows, self.cols)
        for a, r in enumerate(rows.tolist()):
            rv = np.zeros(self.rows)
            rv[r] = volts
            out[a] = -self.solve(G, rv, np.zeros(self.cols)).col_currents
        return out

    def driven_currents(self, G, row_v, col_v) -> tuple[np.ndarray, np.ndarray] | None:
        """Currents [A] into the array at every row and column end for a bias that drives every
        line (no NaN), by the fixed point of `_fixed_point` started from the applied device
        voltages row_v[i] - col_v[j]; None when its contraction bound is too weak (use
        `solve`). Every node lies between the lowest and the highest source level, so that span
        bounds the device voltages and hence their slopes."""
        g = self._check_g(G)
        row_v = np.asarray(row_v, dtype=float).reshape(self.rows)
        col_v = np.asarray(col_v, dtype=float).reshape(self.cols)
        levels = np.concatenate([row_v, col_v])
        if not np.all(np.isfinite(levels)):
            raise SimulatorError("driven_currents needs every line driven (no NaN level)")
        scale = 1.0 if self.v_nl is None else self.v_nl
        x0 = ((row_v[:, None] - col_v[None, :]) / scale)[None]
        cur = self._fixed_point(g, x0, float(levels.max() - levels.min()))
        if cur is None:
            return None
        cur = cur[0]
        # a device current leaves its word line and enters its bit line
        return cur.sum(axis=1), -cur.sum(axis=0)

    def _row_fixed_point(self, g: np.ndarray, row_v: np.ndarray,
                         span: float | None = None) -> np.ndarray | None:
        """`_fixed_point` for drive patterns row_v (k, rows) with every bit line at 0 V.
        `span`: the largest minus the smallest source voltage (0 V included), when the caller
        knows it."""
        if span is None:
            span = float(row_v.max(initial=0.0) - row_v.min(initial=0.0))
        scale = 1.0 if self.v_nl is None else self.v_nl
        x0 = np.repeat((row_v / scale)[:, :, None], self.cols, axis=2)
        return self._fixed_point(g, x0, span)

    def _fixed_point(self, g: np.ndarray, x0: np.ndarray, span: float) -> np.ndarray | None:
        """Device currents (k, rows, cols) [A] of k all-driven biases whose applied device
        voltages are x0 * v_nl (x0: (k, rows, cols)), by fixed-point iteration on the device
        voltages; `span` [V] bounds every |device voltage| (every node lies between the lowest
        and the highest source level). None when the bound on its contraction is too weak (then
        the factorised solve is used).

        With every line driven through r_source, the lines alone form a fixed linear network
        whose response to currents injected at its nodes is known in closed form: along a chain
        driven at one end through r_source, the transfer resistance between nodes a and b is the
        resistance of their common path to the source, r_source + r_line * (segments shared).
        With device currents I (rows x cols) leaving word-line nodes and entering bit-line
        nodes, the device voltages are exactly

            vd = V0 - I @ Zw - Zb @ I,    I = I_dev(vd)

        (V0 = x0 * v_nl; Zw, Zb: transfer resistances of one word line and one bit line).
        Iterating this map converges because device conductances (<= ~1e-3 S) times line
        resistances (ohms) make it a strong contraction; its rate is bounded from the device
        slopes (rho below) and the iteration count follows from that bound, so the result meets
        the same tolerance as the factorised solve (_ATOL_V). Exact for the model, including the
        sinh I-V; a few 8x8 matrix products per iteration. A grounded read is the bias with one
        row at the read voltage and every other line at 0 V.
        """
        m, n = self.rows, self.cols
        k = x0.shape[0]
        if k == 0:
            return np.zeros((0, m, n))
        zw, zb, kron = self._transfer()
        linear = self.v_nl is None
        scale = 1.0 if linear else self.v_nl
        # work in x = vd / v_nl so the I-V is sinh(x) with no division per iteration
        gs = g if linear else g * self.s
        if kron is not None:
            # small arrays: device states as vectors of rows*cols (row-major) and the whole
            # line response as one symmetric matrix, so an iteration is one matrix product
            if k == 1:
                shape = (m * n,)
                respond = kron.dot
            else:
                shape = (k, m * n)

                def respond(cur):
                    return cur @ kron
            x0 = x0.reshape(shape)
        else:
            gs = gs.reshape(m, n)
            shape = (k, m, n)

            def respond(cur):
                return cur @ zw + zb @ cur
        slope = gs if linear else gs * math.cosh(span / scale)
        # max-norm bound of the map's Jacobian (the response is non-negative)
        rho = float(respond(slope if kron is not None else slope[None]).max())
        if rho >= 0.5:
            return None
        tol = _ATOL_V / scale
        cur = np.empty(shape)

        def current(x):
            if linear:
                return np.multiply(gs, x, out=cur)
            np.sinh(x, out=cur)
            return np.multiply(cur, gs, out=cur)

        x = x0 - respond(current(x0))
        step = float(np.abs(x - x0).max())
        # error after j more iterations <= rho^(j+1) / (1 - rho) * step
        bound = step * rho / (1.0 - rho)
        extra = 0
        if bound > tol and rho > 0.0:
            extra = int(math.ceil(math.log(tol / bound) / math.log(rho)))
        for _ in range(min(extra, _MAX_ITER)):
            x = x0 - respond(current(x))
        return current(x).reshape(k, m, n)

    def _transfer(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Transfer resistances of one word line (cols x cols) and one bit line (rows x rows),
        in units of v_nl (ohm / V_nl) so the iteration works on x = vd / v_nl; for arrays of
        up to 256 devices also the whole response as one (rows*cols)^2 matrix."""
        tr = self._tr
        if tr is None:
            m, n = self.rows, self.cols
            scale = 1.0 if self.v_nl is None else self.v_nl
            j, i = np.arange(n), np.arange(m)
            # word lines driven at column 0; bit lines at row m-1
            zw = (self.r_source + self.r_line * np.minimum.outer(j, j)) / scale
            zb = (self.r_source + self.r_line * (m - 1 - np.maximum.outer(i, i))) / scale
            # vec(I @ Zw + Zb @ I) = (1_m (x) Zw + Zb (x) 1_n) vec(I), row-major vec
            kron = (np.kron(np.eye(m), zw) + np.kron(zb, np.eye(n))) if m * n <= 256 else None
            tr = self._tr = (zw, zb, kron)
        return tr

    def _factored(self, g: np.ndarray, row_v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`_row_fixed_point` by the factorised solve: (row currents (k, rows), sensed column
        currents (k, cols)). One Cholesky factor of the matrix linearised at the largest drive
        (chord iterations), reused for every pattern."""
        m, n = self.rows, self.cols
        k = row_v.shape[0]
        driven_r = np.ones(m, dtype=bool)
        driven_c = np.ones(n, dtype=bool)
        pat = self._pattern(driven_r, driven_c)
        B = np.zeros((self.N, k))
        V = np.zeros((self.N, k))
        if self.r_source > 0:
            B[self.row_end] = row_v.T / self.r_source
        else:
            V[self.row_end] = row_v.T
        # chord matrix: devices linearised at their secant slope at the largest drive
        vc = float(np.abs(row_v).max()) if k else 0.0
        if self.v_nl is None or vc == 0:
            gc = g
        else:
            gc = g * (self.s * math.sinh(vc / self.v_nl) / vc)
        f = pat.free
        solve = self._factor(pat, gc)
        gcol = g[:, None]
        for _ in range(_MAX_ITER):
            vd = V[self.a] - V[self.b]
            if self.v_nl is None:
                cur = gcol * vd
            else:
                cur = (gcol * self.s) * np.sinh(vd / self.v_nl)
            F = pat.L @ V - B + self.Dt @ cur
            dV = solve(-(F if pat.all_free else F[f]))
            if pat.all_free:
                V += dV
            else:
                V[f] += dV
            if self.v_nl is None or np.max(np.abs(dV)) < _ATOL_V:
                break
        else:
            raise SimulatorError("grounded read solve did not converge")
        vd = V[self.a] - V[self.b]
        cur = self._iv(g[:, None], vd)[0]
        rc, cc = self._end_currents(pat, V, cur, row_v.T, np.zeros((n, k)), driven_r, driven_c)
        if k == 1:
            rc, cc = rc[:, None], cc[:, None]
        return rc.T, -cc.T   # sensed = flowing out of the array into the virtual ground


def _one_hot(rows: int, which: np.ndarray, volts: float) -> np.ndarray:
    """Drive patterns (len(which), rows): row which[a] at `volts`, every other row at 0 V."""
    row_v = np.zeros((which.size, rows))
    if which.size == 1:
        row_v[0, which[0]] = volts
    else:
        row_v[np.arange(which.size), which] = volts
    return row_v
