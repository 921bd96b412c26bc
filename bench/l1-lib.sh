# Sourced by the bench/*-inner.sh scripts inside L1 (busybox sh), from /payload.
# now: uptime in centiseconds (busybox date has no %N; plenty for multi-second nested boots).
now() { cut -d" " -f1 /proc/uptime | tr -d .; }
# qemu_microvm QEMU INITRD CMDLINE: QEMU -M microvm booting podvm's kernel with INITRD, one vCPU,
# 256 MiB, console to /tmp/qemu-console.log; the agent has no vsock there and falls back to the
# second UART, written to /tmp/qemu-agent.out (removed first).
qemu_microvm() {
  rm -f /tmp/qemu-agent.out
  $1 -M microvm,isa-serial=on,rtc=off -enable-kvm -cpu host -smp 1 -m 256 -nodefaults \
    -no-user-config -nographic -no-reboot -serial file:/tmp/qemu-console.log \
    -chardev file,id=agent,path=/tmp/qemu-agent.out -device isa-serial,chardev=agent,iobase=0x2f8,irq=3 \
    -kernel lib/podvm/vmlinux -initrd "$2" -append "$3"
}
