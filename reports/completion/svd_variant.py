"""`scripts/transfer_real.py` with the SVD completion that the zero rule replaced (for comparison
only): the same arguments, the maps' open directions completed as before commit f050dac.

    python reports/completion/svd_variant.py run --pair minilm-l3:minilm-l6 --data bbc_news \
        --methods bico,activation,gradient --tag svd -o runs/transfer_zero
"""

import sys
from pathlib import Path

from tasklift import maps

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parents[1] / "scripts")]
from run import svd_completion  # noqa: E402
from transfer_real import main  # noqa: E402

if __name__ == "__main__":
    maps.procrustes = svd_completion
    main()
