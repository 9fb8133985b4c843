"""Log-prior values shared by the ELS math and the plans that feed it (no torch: the window reads them)."""

# A log-prior this low shuts a reference out of a pixel. Finite, so that a pixel every reference is shut
# out of still has a defined softmax instead of NaN; far below any logit gap a patch distance can make.
EXCLUDED = -1e4
