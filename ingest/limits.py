"""Resource limits for one ingestion run (per-file caps, archive bomb guards, parser worker caps)."""

from __future__ import annotations

from dataclasses import dataclass

MB = 1000 * 1000


@dataclass(frozen=True)
class Limits:
    """Caps that keep one hostile or huge input from exhausting the machine.

    Every number is checked in `__post_init__`. Sizes are in bytes.
    """

    max_file_bytes: int = 20 * MB            # per file, on disk or inside an archive
    max_files: int = 200_000                 # files considered in one run, all roots together
    max_archive_entries: int = 10_000        # members listed in one archive
    max_archive_member_bytes: int = 20 * MB  # uncompressed size of one member
    max_archive_total_bytes: int = 1000 * MB # uncompressed size of all members of one archive
    max_compression_ratio: float = 100.0     # uncompressed / compressed, per member
    max_pdf_pages: int = 20_000              # pages read from one PDF
    minified_line_chars: int = 2_000         # .js/.css whose mean line is longer count as minified
    parse_timeout_s: float = 120.0           # wall clock for one PDF/DOCX in the parser worker
    parse_memory_bytes: int = 2000 * MB      # address-space cap of the parser worker (RLIMIT_AS)

    def __post_init__(self):
        for name, value in vars(self).items():
            if not value > 0:
                raise ValueError(f"Limits.{name} must be positive, got {value!r}")
