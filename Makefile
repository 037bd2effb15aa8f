# Every target builds the environment in .venv first if it is missing or out of date.
VENV   ?= .venv
PYTHON := $(VENV)/bin/python
STAMP  := $(VENV)/.hpf-env-stamp
DEMO_CONFIG ?= configs/Shapes/atss_R18h_FPN_hpf_demo.py
DEMO_OUT    ?= output/demo
DEMO_OPTS   ?=

.PHONY: setup test demo compare compare-summary compare-rcnn env clean-demo

setup: $(STAMP)

$(STAMP): requirements.txt setup.py tools/setup_env.sh
	bash tools/setup_env.sh $(VENV)
	touch $@

env: $(STAMP)
	$(PYTHON) -m hpf.collect_env

# The whole test suite (CPU). Logs the exact versions first.
test: $(STAMP)
	$(PYTHON) -m hpf.collect_env
	$(PYTHON) -m pytest tests -q -ra --durations=15

# Generates the shapes dataset if missing, trains ATSS with HPF (half-width ResNet-18 FPN) on CPU, evaluates on shapes_val
# (--resume: a finished run is only re-evaluated, a killed one continues) and draws predictions on a few validation images into $(DEMO_OUT)/predictions.png.
demo: $(STAMP)
	$(PYTHON) -m hpf.data.shapes
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-$$(nproc)} $(PYTHON) train_net.py \
	  --config-file $(DEMO_CONFIG) --resume train.output_dir=$(DEMO_OUT) $(DEMO_OPTS)
	$(PYTHON) tools/visualize_predictions.py --config-file $(DEMO_CONFIG) \
	  --checkpoint $(DEMO_OUT)/model_final.pth --output $(DEMO_OUT)/predictions.png $(DEMO_OPTS)

clean-demo:
	rm -rf $(DEMO_OUT)

# ATSS with focal loss, HPF and Sampling-Free on the shapes dataset, same budget and seed each
# (about 10 minutes each on 2 CPU cores); prints their AP side by side.
COMPARE_OUT  ?= output/compare
COMPARE_SEED ?= 0
# One seeded, resumable training run of a comparison: $(call shapes_run,CONFIG,RUN_NAME).
shapes_run = OMP_NUM_THREADS=$${OMP_NUM_THREADS:-$$(nproc)} $(PYTHON) train_net.py \
  --config-file $(1) --resume train.seed=$(COMPARE_SEED) \
  train.output_dir=$(COMPARE_OUT)/seed$(COMPARE_SEED)/$(2)
compare: $(STAMP)
	$(PYTHON) -m hpf.data.shapes
	for loss in focal hpf sampling_free; do \
	  $(call shapes_run,configs/Shapes/atss_R18h_FPN_$$loss.py,$$loss) || exit 1; \
	done
	$(PYTHON) tools/compare_runs.py $(COMPARE_OUT)/seed$(COMPARE_SEED)/focal \
	  $(COMPARE_OUT)/seed$(COMPARE_SEED)/hpf $(COMPARE_OUT)/seed$(COMPARE_SEED)/sampling_free

# Every finished seed of `make compare` (COMPARE_SEED=0, 1, ...): rows, then mean and range.
compare-summary: $(STAMP)
	$(PYTHON) tools/compare_runs.py $(COMPARE_OUT)/seed*/focal $(COMPARE_OUT)/seed*/hpf \
	  $(COMPARE_OUT)/seed*/sampling_free

# Faster R-CNN (or RCNN=cascade_rcnn) with biased sampling vs Sampling-Free on the shapes
# dataset, same budget and seed; prints their AP side by side.
RCNN ?= faster_rcnn
compare-rcnn: $(STAMP)
	$(PYTHON) -m hpf.data.shapes
	for variant in "" _sampling_free; do \
	  $(call shapes_run,configs/Shapes/$(RCNN)_R18h_FPN$$variant.py,$(RCNN)$$variant) || exit 1; \
	done
	$(PYTHON) tools/compare_runs.py $(COMPARE_OUT)/seed$(COMPARE_SEED)/$(RCNN) \
	  $(COMPARE_OUT)/seed$(COMPARE_SEED)/$(RCNN)_sampling_free
