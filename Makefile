# Every target builds the environment in .venv first if it is missing or out of date.
VENV   ?= .venv
PYTHON := $(VENV)/bin/python
STAMP  := $(VENV)/.hpf-env-stamp
DEMO_CONFIG ?= configs/Shapes/fcos_R18_FPN_demo.py
DEMO_OUT    ?= output/demo

.PHONY: setup test demo env clean-demo

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

# Generates the shapes dataset if missing, trains FCOS-R18 on CPU, evaluates on shapes_val
# (--resume: a finished run is only re-evaluated, a killed one continues) and draws predictions on a few validation images into $(DEMO_OUT)/predictions.png.
demo: $(STAMP)
	$(PYTHON) -m hpf.data.shapes
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-$$(nproc)} $(PYTHON) train_net.py \
	  --config-file $(DEMO_CONFIG) --resume train.output_dir=$(DEMO_OUT)
	$(PYTHON) tools/visualize_predictions.py --config-file $(DEMO_CONFIG) \
	  --checkpoint $(DEMO_OUT)/model_final.pth --output $(DEMO_OUT)/predictions.png

clean-demo:
	rm -rf $(DEMO_OUT)
