import SystemPackage

extension Errno {
    /// The device is gone or broken: removed, unbound, or stuck in D3cold (the kernel's
    /// resume failed). The holder must close its fd so the kernel can finish an unbind.
    var meansDeviceGone: Bool {
        self == .operationNotSupportedByDevice || self == .ioError || self == .noSuchAddressOrDevice
            || self == .noSuchFileOrDirectory
    }
}
