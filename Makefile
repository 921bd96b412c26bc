# podvm build, test and demo entry points. See README.md.
#
#   make            static podvm, its containerd shim, the guest agent and kernel into out/
#                   (an install-prefix layout)
#   make test       formatting, lints, unit, host and nested E2E tests, then make fuzz
#   make fuzz       every fuzz target for FUZZ_SECONDS (default 20) each (fuzz/, scripts/fuzz.sh)
#   make demo       install what is missing, build, run a command in a microVM
#   make install    copy out/ to $(PREFIX)

TARGET  := x86_64-unknown-linux-gnu
OUT     := $(CURDIR)/out
PREFIX  ?= /usr/local
CARGO   ?= cargo
STATIC  := RUSTFLAGS="-C target-feature=+crt-static"

.PHONY: all binaries kernel deps test lint unit demo install bench clean fuzz

all: binaries kernel

# The test variant with the seccomp trigger (src/vmm/seccomp/trigger.rs) is built first and
# installed under out/test only; the shipped podvm is built last, without the feature, and
# checked not to contain the trigger.
binaries:
	$(STATIC) $(CARGO) build --release --target $(TARGET) -p podvm --features seccomp-test-trigger
	install -D -m 0755 target/$(TARGET)/release/podvm $(OUT)/test/podvm-seccomp-trigger
	$(STATIC) $(CARGO) build --release --target $(TARGET) -p podvm -p podvm-agent -p podvm-probe -p podvm-shim
	! grep -q PODVM_SECCOMP_TEST_TRIGGER target/$(TARGET)/release/podvm
	install -D -m 0755 target/$(TARGET)/release/podvm $(OUT)/bin/podvm
	install -D -m 0755 target/$(TARGET)/release/podvm-agent $(OUT)/lib/podvm/podvm-agent
	install -D -m 0755 target/$(TARGET)/release/podvm-probe $(OUT)/test/podvm-probe
	install -D -m 0755 target/$(TARGET)/release/containerd-shim-podvm-v2 $(OUT)/bin/containerd-shim-podvm-v2

kernel:
	kernel-config/build.sh $(OUT)/lib/podvm/vmlinux

deps:
	scripts/install-deps.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Checks of the nested E2E batches retried after a silent guest death (issue 20), summed up
# after the tests whether they passed or not; the harness self-test's deliberate retry of its
# check `retried` is not counted.
RETRIES := target/tmp/nested/retries.log

test: deps all lint
	rm -f $(RETRIES)
	PODVM_OUT_DIR=$(OUT) $(CARGO) test --workspace -- --nocapture; rc=$$?; \
	  real=$$(grep -v '^harness-selftest/retried:' $(RETRIES) 2>/dev/null); \
	  if [ -n "$$real" ]; then \
	    echo "nested: $$(echo "$$real" | wc -l) check(s) retried after a silent guest death:"; \
	    echo "$$real" | sed 's/^/  /'; \
	  else echo "nested: no check retried after a silent guest death"; fi; \
	  exit $$rc
	$(MAKE) fuzz

FUZZ_SECONDS ?= 20

fuzz: deps
	FUZZ_SECONDS=$(FUZZ_SECONDS) scripts/fuzz.sh

demo: deps all
	scripts/demo.sh $(OUT)

install: all
	install -D -m 0755 $(OUT)/bin/podvm $(PREFIX)/bin/podvm
	install -D -m 0755 $(OUT)/bin/containerd-shim-podvm-v2 $(PREFIX)/bin/containerd-shim-podvm-v2
	install -D -m 0755 $(OUT)/lib/podvm/podvm-agent $(PREFIX)/lib/podvm/podvm-agent
	install -D -m 0644 $(OUT)/lib/podvm/vmlinux $(PREFIX)/lib/podvm/vmlinux

bench: deps all
	bench/boot.sh $(OUT)
	bench/pods.sh $(OUT)

clean:
	rm -rf $(OUT)
	$(CARGO) clean
