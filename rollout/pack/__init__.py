"""``sophia-rollout pack``: samples -> the packed, length-sorted training dataset (the contract in
``sophia_common/contract.py``).

``build`` reads and mixes samples and drives the rest; ``render`` applies the InternVL chat
template and the assistant-only loss mask; ``planner`` packs lengths (best-fit decreasing);
``write`` writes shards and the manifest atomically; ``samples`` holds the sample types they pass
along (imports go one way: build -> write -> samples -> render).
"""
