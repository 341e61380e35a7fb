# Quick start:  make demo   (simulate a dither set and run the whole stage)
#               make test   (run the test suite)
PYTHON ?= python3
CORES ?= 2
DEMO_SIZE ?= 1024
DEMO_ASN := demo/data/jw01234-o001_20231218t000000_image3_00001_asn.json

.PHONY: install demo test clean

install:
	$(PYTHON) -m pip install --quiet -e ".[test]"

DEMO_CONFIG := asn=$(DEMO_ASN) output_dir=demo/output truth=demo/data/truth

demo: install
	$(PYTHON) -m calimage3.simulate demo/data --n-exposures 4 --size $(DEMO_SIZE)
	$(PYTHON) -m snakemake --cores $(CORES) --config $(DEMO_CONFIG)
	$(PYTHON) -m snakemake --report demo/output/report.html --config $(DEMO_CONFIG)
	@echo
	@echo "Products (_i2d mosaic, _cat.ecsv catalog, _segm map, _crf exposures) are in demo/output/"
	@echo "The QA report is demo/output/report.html; the simulator's truth is in demo/data/truth/"

test: install
	$(PYTHON) -m pytest -v --durations=15

clean:
	rm -rf demo .snakemake
