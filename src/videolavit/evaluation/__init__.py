"""What the ``evaluate`` stage computes, by part: ``protocol`` (the pinned settings and the results), ``qa``,
``extractors`` (FVD / CLIPSIM features), ``t2v`` (text → video) and ``recon`` (reconstruction)."""
