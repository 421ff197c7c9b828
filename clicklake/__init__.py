from clicklake.platform.memory import prefer_jemalloc

prefer_jemalloc()  # before anything imports pyarrow: see clicklake/platform/memory.py
