/// Hands a value from one queue to another: made on one, then used on the other, never by
/// both at once (a device's results to the daemon's queue, a loaded configuration from the
/// loader). That order is what makes the `@unchecked Sendable` true.
final class Handover<Value>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}
