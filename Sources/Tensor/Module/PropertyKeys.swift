import Foundation

// Property wrappers that tell `Module`'s reflection how to name a stored property in a checkpoint
// and whether a tensor is a trainable parameter or a buffer.
//
// Without a wrapper a stored property is named exactly as written in Swift (`conv1`, `weight`).
// Swift property names are camelCase while PyTorch's are snake_case, so a property whose checkpoint
// key differs from its Swift name carries the key explicitly:
//
//     @ModuleKey("down_blocks") var downBlocks: [DownBlock]
//     @ParameterKey("in_proj_weight") var inProjWeight: Tensor
//     @Buffer("position_ids") var positionIDs: Tensor
//
// A wrapped property with no initial value is set in the initializer through its backing storage
// before `super.init()` (`_downBlocks.wrappedValue = …`) or through the property after it
// (`downBlocks = …`). Reading one that was never set is a programming error and traps.

/// What reflection reads from a wrapped property: the checkpoint key and the current value.
protocol CheckpointKeyedProperty {
    /// The name used in checkpoints instead of the Swift property name.
    var checkpointKey: String { get }
    /// The wrapped value, or nil when it was never set.
    var reflectedValue: Any? { get }
}

/// Whether a wrapped tensor is a buffer rather than a parameter.
protocol BufferProperty: CheckpointKeyedProperty {
    var isPersistent: Bool { get }
}

/// Gives a child module (or an array, optional or `[String: Module]` dictionary of modules) the
/// checkpoint key `key` instead of its Swift name.
///
/// The empty key `""` splices the children into the parent's namespace: `Sequential` stores its
/// layers as `@ModuleKey("") var layers`, so they are named `0.weight`, `2.weight`, as in PyTorch.
@propertyWrapper
public struct ModuleKey<Value>: CheckpointKeyedProperty {
    private var storage: Value?
    public let key: String

    public init(wrappedValue: Value, _ key: String) {
        self.storage = wrappedValue
        self.key = key
    }

    /// A property that the initializer sets later.
    public init(_ key: String) {
        self.storage = nil
        self.key = key
    }

    public var wrappedValue: Value {
        get {
            guard let storage else { preconditionFailure("module property '\(key)' read before it was set") }
            return storage
        }
        set { storage = newValue }
    }

    var checkpointKey: String { key }
    var reflectedValue: Any? { storage.map { $0 as Any } }
}

/// Gives a parameter tensor (`Tensor`, `Tensor?` or `[Tensor]`) the checkpoint key `key` instead
/// of its Swift name.
@propertyWrapper
public struct ParameterKey<Value>: CheckpointKeyedProperty {
    private var storage: Value?
    public let key: String

    public init(wrappedValue: Value, _ key: String) {
        self.storage = wrappedValue
        self.key = key
    }

    /// A property that the initializer sets later.
    public init(_ key: String) {
        self.storage = nil
        self.key = key
    }

    public var wrappedValue: Value {
        get {
            guard let storage else { preconditionFailure("parameter '\(key)' read before it was set") }
            return storage
        }
        set { storage = newValue }
    }

    var checkpointKey: String { key }
    var reflectedValue: Any? { storage.map { $0 as Any } }
}

/// Marks a tensor (`Tensor` or `Tensor?`) as a buffer: state that is not trained.
///
/// Buffers never appear in `parameters()`, are never frozen or unfrozen, and receive no
/// optimizer updates. A *persistent* buffer (the default, like PyTorch's `register_buffer`) is
/// saved in `stateDict()` and expected by `load`; a non-persistent one (`persistent: false`, for
/// caches such as rotary tables or masks) is invisible to checkpoints.
/// The key defaults to the Swift property name.
@propertyWrapper
public struct Buffer<Value>: BufferProperty {
    private var storage: Value?
    /// The checkpoint key; nil means the Swift property name.
    public let key: String?
    public let persistent: Bool

    public init(wrappedValue: Value, _ key: String? = nil, persistent: Bool = true) {
        self.storage = wrappedValue
        self.key = key
        self.persistent = persistent
    }

    /// A buffer that the initializer sets later.
    public init(_ key: String? = nil, persistent: Bool = true) {
        self.storage = nil
        self.key = key
        self.persistent = persistent
    }

    public var wrappedValue: Value {
        get {
            guard let storage else { preconditionFailure("buffer '\(key ?? "?")' read before it was set") }
            return storage
        }
        set { storage = newValue }
    }

    /// Empty when the key is the Swift name; reflection substitutes the property label.
    var checkpointKey: String { key ?? "" }
    var reflectedValue: Any? { storage.map { $0 as Any } }
    var isPersistent: Bool { persistent }
}
