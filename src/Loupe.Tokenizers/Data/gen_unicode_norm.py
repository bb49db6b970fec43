#!/usr/bin/env python3
"""Generates unicode_norm.txt.gz, the Unicode normalization tables used by UnicodeNormalization.cs.

The .NET runtime cannot normalize when InvariantGlobalization is on (string.Normalize is then a
no-op for non-ASCII text), so Loupe.Tokenizers carries its own tables. Run with any CPython 3:
    python3 gen_unicode_norm.py   (writes unicode_norm.txt.gz beside this script)
Line format (hex code points):
    u <version>                    Unicode version of the data
    c <first> <last> <ccc>         canonical combining class of a range (non-zero only)
    d <cp> <cp>...                 full canonical decomposition (NFD) of cp
    k <cp> <cp>...                 full compatibility decomposition (NFKD) where it differs from NFD
    p <first> <second> <composite> primary composite pairs (canonical composition, exclusions removed)
Hangul syllables are handled algorithmically and are not listed.
"""
import gzip, os, sys, unicodedata as ud

def is_hangul(cp): return 0xAC00 <= cp <= 0xD7A3

lines = [f"u {ud.unidata_version}"]
run = None
for cp in range(0x110000):
    c = ud.combining(chr(cp))
    if run and run[2] == c and run[1] == cp - 1:
        run[1] = cp
        continue
    if run and run[2] != 0:
        lines.append(f"c {run[0]:X} {run[1]:X} {run[2]}")
    run = [cp, cp, c]
if run and run[2] != 0:
    lines.append(f"c {run[0]:X} {run[1]:X} {run[2]}")

for cp in range(0x110000):
    if is_hangul(cp) or 0xD800 <= cp <= 0xDFFF: continue
    ch = chr(cp)
    nfd = ud.normalize("NFD", ch)
    nfkd = ud.normalize("NFKD", ch)
    if nfd != ch:
        lines.append("d " + " ".join(f"{ord(x):X}" for x in [ch] + list(nfd)))
    if nfkd != nfd:
        lines.append("k " + " ".join(f"{ord(x):X}" for x in [ch] + list(nfkd)))
    dec = ud.decomposition(ch)
    if dec and not dec.startswith("<"):
        parts = [int(x, 16) for x in dec.split()]
        if len(parts) == 2 and ud.normalize("NFC", chr(parts[0]) + chr(parts[1])) == ch:
            lines.append(f"p {parts[0]:X} {parts[1]:X} {cp:X}")

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "unicode_norm.txt.gz")
with gzip.GzipFile(out, "wb", mtime=0) as f:
    f.write(("\n".join(lines) + "\n").encode("ascii"))
print(out, len(lines), "lines", file=sys.stderr)
