"""The SOPHIA off-policy update and the warm-up SFT (``sophia-train``)."""
