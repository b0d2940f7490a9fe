/// Numbers from the virtio 1.2 specification (docs.oasis-open.org/virtio/virtio/v1.2) that both the
/// transport and the devices use.
public enum Virtio {
    /// Device types (§5).
    public enum DeviceID {
        public static let network: UInt32 = 1
        public static let block: UInt32 = 2
    }

    /// Feature bits that are not device-specific (§6).
    public enum Feature {
        /// The modern interface: little-endian everywhere, no legacy layout. Required here.
        public static let version1: UInt64 = 1 << 32
    }

    /// Bits of the device status field (§2.1).
    public enum Status {
        public static let acknowledge: UInt32 = 1
        public static let driver: UInt32 = 2
        public static let driverOK: UInt32 = 4
        public static let featuresOK: UInt32 = 8
        /// Set by the device when it has hit an error it cannot recover from without a reset.
        public static let deviceNeedsReset: UInt32 = 64
        public static let failed: UInt32 = 128
    }

    /// Bits of the virtio-mmio InterruptStatus register (§4.2.2).
    public enum Interrupt {
        /// The device used a buffer in at least one virtqueue.
        public static let usedBuffer: UInt32 = 1
        /// The device's configuration (or its status, e.g. DEVICE_NEEDS_RESET) changed.
        public static let configurationChange: UInt32 = 2
    }
}
