"""Run scripts/transfer_real.py's `run` from the code on PYTHONPATH (a worktree's src), without
B_ft (draw 0's 'B fine-tuned' row skipped). SOLVER=svd swaps procrustes for procrustes_svd;
SOLVER=compare keeps procrustes but logs max|R - R_svd| per call."""
import json, os, sys, time
import numpy as np
wt = os.environ["WT"]
sys.path.insert(0, f"{wt}/scripts")
import transfer_real as tr
import tasklift
print("tasklift from", tasklift.__file__, flush=True)
_tt = tr.transfer_table
def tt(*a, **k):
    k["target_finetuned"] = None
    return _tt(*a, **k)
tr.transfer_table = tt
mode = os.environ.get("SOLVER", "")
if mode:
    import tasklift.maps as M, tasklift.solvers as S
    orig, ref = S.procrustes, S.procrustes_svd
    log = []
    def patched(xy, tie=None, *, rtol=S.NULL_RTOL):
        if mode == "svd":
            R = ref(xy, tie, rtol=rtol)
            s = np.linalg.svd(xy, compute_uv=False)
            return R, int(min(xy.shape) - (s > rtol * s[0]).sum())
        R, nd = orig(xy, tie, rtol=rtol)
        Rs = ref(xy, tie, rtol=rtol)
        s = np.linalg.svd(xy, compute_uv=False)
        k = min(xy.shape)
        G = R.T @ R if xy.shape[0] >= xy.shape[1] else R @ R.T
        rec = dict(shape=list(xy.shape), tie=tie is not None, open=nd,
                   cond=float(s[0] / max(s[-1], 1e-300)),
                   n_below_1e4=int((s < 1e-4 * s[0]).sum()),
                   maxdiff=float(np.abs(R - Rs).max()), fro_rel=float(np.linalg.norm(R - Rs) / np.sqrt(k)),
                   orth_err=float(np.abs(G - np.eye(k)).max()),
                   obj=float(np.einsum("ij,ij->", R, xy)), obj_svd=float(np.einsum("ij,ij->", Rs, xy)))
        log.append(rec)
        print("PROC", json.dumps(rec), flush=True)
        return R, nd
    M.procrustes = patched
sys.argv = ["transfer_real.py"] + sys.argv[1:]
tr.main()
