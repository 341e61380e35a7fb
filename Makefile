# Quick start:  make demo   (simulate a dither set and run the whole stage)
#               make test   (run the test suite)
PYTHON ?= python3
CORES ?= 2
DEMO_SIZE ?= 1024
DEMO_ASN := demo/data/jw01234-o001_20231218t000000_image3_00001_asn.json

.PHONY: install demo test clean

install:
	$(PYTHON) -m pip install --quiet -e ".[test]"

demo: install
	$(PYTHON) -m calimage3.simulate demo/data --n-exposures 4 --size $(DEMO_SIZE)
	$(PYTHON) -m snakemake --cores $(CORES) --config asn=$(DEMO_ASN) output_dir=demo/output
	@echo "Products are in demo/output/ (the _i2d mosaic, _cat.ecsv catalog, _segm map and _crf files)."

test: install
	$(PYTHON) -m pytest -v --durations=15

clean:
	rm -rf demo .snakemake
