"""The `bmx-compare` application, built on the library one level up, in the phases a comparison goes through:
`plan` (what runs, checked first), `run` (one run trained and recorded), `decide` (what the runs mean), `report`
(what the command writes), then `compare` and `cli` on top"""
