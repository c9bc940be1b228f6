import CZeroMQ
import Foundation

/// A failed libzmq call: the operation and errno, with libzmq's message.
public struct ZMQError: Error, CustomStringConvertible, Equatable, Sendable {
    public let operation: String
    public let code: Int32

    public init(operation: String, code: Int32) {
        self.operation = operation
        self.code = code
    }

    /// `ETERM`, spelled out because zmq.h defines it as `ZMQ_HAUSNUMERO + 53`.
    public static let contextTerminated: Int32 = 156_384_712 + 53
    /// libzmq's own `EHOSTUNREACH` (a ROUTER with `ZMQ_ROUTER_MANDATORY` cannot route the message).
    public static let hostUnreachable: Int32 = 156_384_712 + 17

    /// The peer a ROUTER tried to reach is gone.
    public var isHostUnreachable: Bool { code == Self.hostUnreachable || code == EHOSTUNREACH }
    /// The send or receive would block (only with `dontWait`).
    public var isWouldBlock: Bool { code == EAGAIN }

    public var description: String { "\(operation): \(String(cString: zmq_strerror(code))) (errno \(code))" }

    static func last(_ operation: String) -> ZMQError { ZMQError(operation: operation, code: zmq_errno()) }
}

/// A libzmq context; sockets keep it alive, and it is terminated when the last one is gone.
public final class ZMQContext: @unchecked Sendable {
    let handle: UnsafeMutableRawPointer

    /// A new context with one libzmq I/O thread.
    public init() throws {
        guard let handle = zmq_ctx_new() else { throw ZMQError.last("zmq_ctx_new") }
        self.handle = handle
    }

    deinit { zmq_ctx_term(handle) }
}

/// One multipart message as received, with what was dropped to keep memory bounded.
public struct ZMQMessage: Sendable {
    /// The frames kept, in order.
    public var frames: [Data]
    /// Total bytes of all frames, including dropped ones.
    public var totalBytes: Int
    /// Total frames, including dropped ones.
    public var frameCount: Int
    /// True when frames were dropped because of the byte or frame limit.
    public var isTruncated: Bool { frames.count < frameCount }
}

/// A libzmq socket, closed with linger 0 (pending messages are dropped, never block exit).
///
/// Not thread-safe, like the libzmq socket it wraps: one thread uses it at a time.
public final class ZMQSocket {
    /// The libzmq socket types Sura uses.
    public enum Kind: Sendable {
        case router, dealer, req, rep, pair, push, pull

        var raw: Int32 {
            switch self {
            case .router: return ZMQ_ROUTER
            case .dealer: return ZMQ_DEALER
            case .req: return ZMQ_REQ
            case .rep: return ZMQ_REP
            case .pair: return ZMQ_PAIR
            case .push: return ZMQ_PUSH
            case .pull: return ZMQ_PULL
            }
        }
    }

    public let kind: Kind
    private let context: ZMQContext
    private var handle: UnsafeMutableRawPointer?
    /// True while libzmq's socket monitor publishes this socket's events.
    private var monitored = false

    /// A socket of `kind` in `context`, with linger 0.
    public init(context: ZMQContext, kind: Kind) throws {
        guard let handle = zmq_socket(context.handle, kind.raw) else { throw ZMQError.last("zmq_socket") }
        self.context = context
        self.kind = kind
        self.handle = handle
        try setOption(ZMQ_LINGER, Int32(0))
    }

    deinit { close() }

    /// Closes the socket; later calls throw `ENOTSOCK`. A monitor is stopped first: the closed
    /// socket may linger (and reconnect) in libzmq's I/O thread, and an event it raised for a
    /// reader that has gone would block that thread, and every `zmq_ctx_term` after it, for good.
    public func close() {
        stopMonitor()
        if let handle { zmq_close(handle) }
        handle = nil
    }

    /// Has libzmq publish `events` (`ZMQ_EVENT_*`) of this socket on the inproc `address`, for
    /// one PAIR socket to read. The reader must keep reading until `stopMonitor` or `close`.
    func startMonitor(address: String, events: Int32) throws {
        guard zmq_socket_monitor(try live("zmq_socket_monitor"), address, events) == 0 else {
            throw ZMQError.last("zmq_socket_monitor")
        }
        monitored = true
    }

    /// Stops the monitor; libzmq closes its publishing end, so no event is sent after this returns.
    func stopMonitor() {
        guard monitored, let handle else { return }
        zmq_socket_monitor(handle, nil, 0)
        monitored = false
    }

    /// The libzmq handle, or `ENOTSOCK` once closed.
    func live(_ operation: String) throws -> UnsafeMutableRawPointer {
        guard let handle else { throw ZMQError(operation: operation, code: ENOTSOCK) }
        return handle
    }

    /// Binds and returns the endpoint actually bound (`tcp://127.0.0.1:*` resolves the port).
    @discardableResult
    public func bind(_ endpoint: String) throws -> String {
        guard zmq_bind(try live("zmq_bind"), endpoint) == 0 else { throw ZMQError.last("zmq_bind \(endpoint)") }
        return try lastEndpoint()
    }

    /// Connects to an endpoint; libzmq reconnects by itself if the peer goes away.
    public func connect(_ endpoint: String) throws {
        guard zmq_connect(try live("zmq_connect"), endpoint) == 0 else { throw ZMQError.last("zmq_connect \(endpoint)") }
    }

    /// Sets an integer socket option (`ZMQ_*` from zmq.h).
    public func setOption(_ option: Int32, _ value: Int32) throws {
        var value = value
        guard zmq_setsockopt(try live("zmq_setsockopt"), option, &value, MemoryLayout<Int32>.size) == 0 else {
            throw ZMQError.last("zmq_setsockopt \(option)")
        }
    }

    /// Sets a 64-bit socket option.
    public func setOption(_ option: Int32, _ value: Int64) throws {
        var value = value
        guard zmq_setsockopt(try live("zmq_setsockopt"), option, &value, MemoryLayout<Int64>.size) == 0 else {
            throw ZMQError.last("zmq_setsockopt \(option)")
        }
    }

    /// Sets a binary socket option (e.g. `ZMQ_ROUTING_ID`).
    public func setOption(_ option: Int32, bytes: Data) throws {
        let handle = try live("zmq_setsockopt")
        let status = bytes.withUnsafeBytes { zmq_setsockopt(handle, option, $0.baseAddress, bytes.count) }
        guard status == 0 else { throw ZMQError.last("zmq_setsockopt \(option)") }
    }

    /// Milliseconds pending outgoing messages may wait for delivery after `close` (0 = drop them).
    public func setLinger(milliseconds: Int32) throws { try setOption(ZMQ_LINGER, milliseconds) }

    /// Makes a ROUTER report unroutable messages as `EHOSTUNREACH` instead of dropping them.
    public func setRouterMandatory() throws { try setOption(ZMQ_ROUTER_MANDATORY, Int32(1)) }

    /// High-water marks: messages queued per peer before sends block or fail.
    public func setHighWaterMarks(send: Int32, receive: Int32) throws {
        try setOption(ZMQ_SNDHWM, send)
        try setOption(ZMQ_RCVHWM, receive)
    }

    /// libzmq disconnects a peer that sends a single frame larger than this (-1 = no limit).
    public func setMaxMessageSize(_ bytes: Int64) throws { try setOption(ZMQ_MAXMSGSIZE, bytes) }

    /// The last endpoint bound, with the port resolved.
    public func lastEndpoint() throws -> String {
        var buffer = [CChar](repeating: 0, count: 256)
        var size = buffer.count
        guard zmq_getsockopt(try live("zmq_getsockopt"), ZMQ_LAST_ENDPOINT, &buffer, &size) == 0 else {
            throw ZMQError.last("zmq_getsockopt ZMQ_LAST_ENDPOINT")
        }
        return String(cString: buffer)
    }

    /// Sends all frames as one message. With `dontWait`, returns false instead of blocking when
    /// the peer's queue is full; libzmq delivers multipart messages whole or not at all.
    @discardableResult
    public func send(_ frames: [Data], dontWait: Bool = false) throws -> Bool {
        let handle = try live("zmq_send")
        for (index, frame) in frames.enumerated() {
            var flags: Int32 = index + 1 < frames.count ? ZMQ_SNDMORE : 0
            if dontWait { flags |= ZMQ_DONTWAIT }
            while true {
                let status = frame.withUnsafeBytes { zmq_send(handle, $0.baseAddress, frame.count, flags) }
                if status >= 0 { break }
                let error = ZMQError.last("zmq_send")
                if error.code == EINTR { continue }
                if error.isWouldBlock && index == 0 { return false }
                throw error
            }
        }
        return true
    }

    /// Receives one multipart message, or nil when `dontWait` is set and none is waiting.
    ///
    /// Frames past `maxFrames`, and every frame once `maxBytes` have been kept, are read and
    /// dropped (so the socket stays in sync) but counted in `frameCount` and `totalBytes`.
    public func receive(dontWait: Bool = false, maxFrames: Int = 64, maxBytes: Int = 64 << 20) throws -> ZMQMessage? {
        let handle = try live("zmq_msg_recv")
        var message = ZMQMessage(frames: [], totalBytes: 0, frameCount: 0)
        var part = zmq_msg_t()
        zmq_msg_init(&part)
        defer { zmq_msg_close(&part) }
        var keeping = true
        while true {
            let size = zmq_msg_recv(&part, handle, dontWait && message.frameCount == 0 ? ZMQ_DONTWAIT : 0)
            if size < 0 {
                let error = ZMQError.last("zmq_msg_recv")
                if error.code == EINTR { continue }
                if error.isWouldBlock && message.frameCount == 0 { return nil }
                throw error
            }
            let length = zmq_msg_size(&part)
            message.frameCount += 1
            message.totalBytes += length
            if keeping && message.frames.count < maxFrames && message.totalBytes <= maxBytes {
                message.frames.append(length == 0 ? Data() : Data(bytes: zmq_msg_data(&part), count: length))
            } else {
                keeping = false
            }
            if zmq_msg_more(&part) == 0 { break }
        }
        return message
    }

    /// Waits until any of `sockets` has a message to read, or `timeout` milliseconds pass
    /// (negative = wait forever); returns one readable flag per socket. A signal counts as a timeout.
    public static func pollReadable(_ sockets: [ZMQSocket], timeout: Int) throws -> [Bool] {
        try pollReadable(sockets, fds: [], timeout: timeout)
    }

    /// Like `pollReadable(_:timeout:)`, with plain file descriptors (a `PollWakeTimer`'s) polled
    /// beside the sockets: the result lists the sockets' flags, then the descriptors'.
    public static func pollReadable(_ sockets: [ZMQSocket], fds: [Int32], timeout: Int) throws -> [Bool] {
        var items = try sockets.map { socket in
            zmq_pollitem_t(socket: try socket.live("zmq_poll"), fd: 0, events: Int16(ZMQ_POLLIN), revents: 0)
        }
        items += fds.map { zmq_pollitem_t(socket: nil, fd: $0, events: Int16(ZMQ_POLLIN), revents: 0) }
        let status = zmq_poll(&items, Int32(items.count), timeout)
        if status < 0 {
            let error = ZMQError.last("zmq_poll")
            if error.code == EINTR { return Array(repeating: false, count: items.count) }
            throw error
        }
        return items.map { ($0.revents & Int16(ZMQ_POLLIN)) != 0 }
    }
}

extension Data {
    /// The UTF-8 bytes of a string, as a frame.
    init(frame string: String) { self.init(string.utf8) }
}
