"""The `.otok` image codec: photos of any size as tiles of tokenizer ids, bit-packed or range-coded.

One module per stage: `tiling` (photo <-> tiles <-> ids), `rate` (how many ids each tile keeps), `prior` (the
learned model of a tile's ids), `fixedpoint` (that prior in integer arithmetic, the same bits everywhere) and
`entropy` (ids <-> a range-coded stream), `format` (the bytes of an `.otok` file, docs/format.md), `codec` (`Codec`:
all of them together, photo <-> file), `postfilter` (the seam filter applied after decoding); `models` finds the
tokenizer and prior a file names, `prior_system` / `postfilter_system` train them, `rd` is the rate-distortion
report, `bench` the speed and saving benchmarks, `defaults` the torch-free defaults of the commands.
"""
