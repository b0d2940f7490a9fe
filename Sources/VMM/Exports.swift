// The VMM library's users (tests, the command-line tool) speak the shared vocabulary — guest
// addresses and memory, registers — without importing the lower modules themselves.
@_exported import KVM
@_exported import VMMCore
