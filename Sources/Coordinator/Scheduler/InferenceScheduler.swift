import Foundation
import Worker

/// Seconds on a monotonic clock (not wall time: immune to clock changes).
public enum MonotonicClock {
    /// Seconds since an arbitrary fixed point (boot).
    public static func now() -> Double { Double(DispatchTime.now().uptimeNanoseconds) / 1e9 }
}

/// The scheduler process: a ROUTER front end for clients, a ROUTER back end for workers, and the
/// event loop that feeds `SchedulerCore` and sends what it decides.
///
/// One thread runs `run()` and owns both sockets; other threads only call `requestStop` and
/// read `status`. With `curve`, both sockets are CurveZMQ servers and a ZAP handler thread
/// decides which client keys may connect (docs/protocol.md, "Security").
public final class InferenceScheduler: @unchecked Sendable {
    public let configuration: SchedulerConfiguration
    public let metrics: SchedulerMetrics
    public let core: SchedulerCore
    /// The endpoints actually bound (ports resolved).
    public private(set) var frontendEndpoint = ""
    public private(set) var backendEndpoint = ""
    /// The server's public key when both sockets use CURVE, else nil.
    public let curvePublicKey: CurveKey?

    private let context: ZMQContext
    private let frontend: ZMQSocket
    private let backend: ZMQSocket
    private let zap: ZAPHandler?
    private let handshakes: HandshakeDiagnostics?
    private let log: @Sendable (String) -> Void
    private let controlLock = NSLock()
    private var stopRequest: (drain: Bool, at: Double)?
    private var published: SchedulerStatus
    private var autoscaling: AutoscaleController?

    /// Binds both sockets (e.g. `tcp://127.0.0.1:5555`; `tcp://127.0.0.1:*` picks a free port).
    ///
    /// With `curve`, the ZAP handler is bound in `context` before the sockets listen (only one
    /// CURVE scheduler per context), and a malformed authorized-keys file throws here.
    public init(configuration: SchedulerConfiguration, frontend frontendAddress: String, backend backendAddress: String,
                metrics registry: MetricsRegistry, context: ZMQContext? = nil, curve: CurveServerSecurity? = nil,
                log: @escaping @Sendable (String) -> Void) throws {
        self.configuration = configuration
        self.metrics = SchedulerMetrics(registry: registry)
        self.core = SchedulerCore(configuration: configuration, metrics: metrics)
        self.context = try context ?? ZMQContext()
        self.log = log
        frontend = try ZMQSocket(context: self.context, kind: .router)
        backend = try ZMQSocket(context: self.context, kind: .router)
        for socket in [frontend, backend] {
            try socket.setRouterMandatory()
            try socket.setHighWaterMarks(send: 100_000, receive: 100_000)
        }
        if let curve {
            let authorizer = try CurveAuthorizer(authorizedKeysFile: curve.authorizedKeysFile,
                                                 alwaysAllowed: curve.alwaysAllowed.union([curve.keyPair.publicKey]), log: log)
            zap = try ZAPHandler(context: self.context, authorizer: authorizer, log: log)
            let diagnostics = HandshakeDiagnostics(role: .server, context: self.context)
            for (socket, name) in [(frontend, "frontend"), (backend, "backend")] {
                try socket.makeCurveServer(keyPair: curve.keyPair, zapDomain: name)
                try diagnostics.watch(socket, name: name)
            }
            handshakes = diagnostics
            curvePublicKey = curve.keyPair.publicKey
        } else {
            zap = nil
            handshakes = nil
            curvePublicKey = nil
        }
        // A hard guard far above the error-reply limit: peers sending more are disconnected by libzmq.
        try frontend.setMaxMessageSize(Int64(max(configuration.maxRequestBytes * 16, 16 << 20)))
        frontendEndpoint = try frontend.bind(frontendAddress)
        backendEndpoint = try backend.bind(backendAddress)
        published = core.status(now: MonotonicClock.now())
    }

    deinit { zap?.stop() }

    /// Runs the autoscaler every `policy.interval` on the loop thread (local workers or metrics only).
    public func attach(_ controller: AutoscaleController) {
        controlLock.lock()
        autoscaling = controller
        controlLock.unlock()
    }

    /// Asks the loop to stop: with `drain`, new requests are refused while queued and running ones
    /// finish (up to `drainTimeout`); without, everything pending is answered `shutting_down`.
    public func requestStop(drain: Bool) {
        controlLock.lock()
        if stopRequest == nil || !drain { stopRequest = (drain, MonotonicClock.now()) }
        controlLock.unlock()
    }

    /// The latest status snapshot (refreshed about every 10 ms by the loop).
    public var status: SchedulerStatus {
        controlLock.lock()
        defer { controlLock.unlock() }
        return published
    }

    /// The event loop; returns after `requestStop`, once drained.
    public func run() throws {
        var drainDeadline: Double?
        var nextPublish = 0.0, nextAutoscale = 0.0
        let wakeTimer = try PollWakeTimer()
        defer {
            // Let the last replies leave before the sockets close.
            try? frontend.setLinger(milliseconds: 2000)
            frontend.close()
            backend.close()
            handshakes?.close()
            zap?.stop()
        }
        while true {
            var now = MonotonicClock.now()
            let wait = core.nextWakeup(now: now) - now
            // Woken at the deadline itself, not at the next whole millisecond.
            let readable = try wakeTimer.poll([backend, frontend], wait: min(wait, 0.05))
            if readable[0] { try drain(backend, maxBytes: 512 << 20) { self.handleBackend($0) } }
            if readable[1] { try drain(frontend, maxBytes: configuration.maxRequestBytes + 4096) { self.handleFrontend($0) } }
            now = MonotonicClock.now()
            execute(core.tick(now: now))
            if let handshakes { for line in handshakes.reports(now: now) { log(line) } }

            controlLock.lock()
            let stop = stopRequest, controller = autoscaling
            controlLock.unlock()
            if let controller, now >= nextAutoscale, stop == nil {
                nextAutoscale = now + controller.policy.interval
                controller.step(core: core, now: now)
            }
            if let stop {
                if !stop.drain {
                    execute(core.abandonAll(WireError(.shuttingDown, "the scheduler is shutting down")))
                    publish(now: now, controller: controller)
                    return
                }
                if drainDeadline == nil {
                    drainDeadline = now + configuration.drainTimeout
                    execute(core.beginDrain(now: now))
                }
                if core.isIdle {
                    log("drained: every request answered")
                    publish(now: now, controller: controller)
                    return
                }
                if now >= drainDeadline! {
                    log("drain timed out after \(configuration.drainTimeout) s with \(core.pendingCount) requests pending")
                    execute(core.abandonAll(WireError(.shuttingDown, "the scheduler stopped before the request finished (drain timeout)")))
                    publish(now: now, controller: controller)
                    return
                }
            }
            if now >= nextPublish {
                nextPublish = now + 0.01
                publish(now: now, controller: controller)
            }
        }
    }

    private func publish(now: Double, controller: AutoscaleController?) {
        var status = core.status(now: now)
        status.autoscaler = controller?.lastDecision
        controlLock.lock()
        published = status
        controlLock.unlock()
    }

    /// Reads every waiting message (bounded, so the other socket is not starved).
    private func drain(_ socket: ZMQSocket, maxBytes: Int, _ handle: (ZMQMessage) -> Void) throws {
        for _ in 0..<2048 {
            guard let message = try socket.receive(dontWait: true, maxFrames: 64, maxBytes: maxBytes) else { return }
            handle(message)
        }
    }

    // MARK: Front end

    private func handleFrontend(_ message: ZMQMessage) {
        let now = MonotonicClock.now()
        guard let identity = message.frames.first else { return }
        let hasDelimiter = message.frames.count >= 2 && message.frames[1].isEmpty
        let route = ClientRoute(envelope: hasDelimiter ? [identity, Data()] : [identity])
        if message.totalBytes > configuration.maxRequestBytes || message.isTruncated {
            let limit = configuration.maxRequestBytes
            execute(core.refuse(route, id: nil, WireError(.tooLarge, message.isTruncated && message.totalBytes <= limit
                ? "message has \(message.frameCount) frames; at most 64 are accepted"
                : "message is \(message.totalBytes) bytes; the limit is \(limit)")))
            return
        }
        let body = message.frames.dropFirst(route.envelope.count)
        do {
            let (command, payload) = try WireProtocol.parse(body)
            switch command {
            case WireProtocol.submit:
                guard payload.count == 1 else {
                    throw WireError(.badRequest, "SUBMIT takes exactly one JSON payload frame, got \(payload.count)")
                }
                do {
                    let submit = try WireProtocol.decode(SubmitBody.self, from: payload[0], what: "SUBMIT body")
                    execute(core.submit(submit, route: route, now: now))
                } catch let error as WireError {
                    execute(core.refuse(route, id: Self.salvageID(payload[0]), error))
                }
            case WireProtocol.status:
                var status = core.status(now: now)
                status.autoscaler = autoscaling?.lastDecision
                send(frontend, route.envelope + WireProtocol.frames(WireProtocol.status, [WireProtocol.encode(status)]))
            case WireProtocol.ping:
                send(frontend, route.envelope + WireProtocol.frames(WireProtocol.pong))
            default:
                throw WireError(.unknownCommand, "unknown command '\(command)'; clients may send SUBMIT, STATUS or PING")
            }
        } catch let error as WireError {
            execute(core.refuse(route, id: nil, error))
        } catch {
            execute(core.refuse(route, id: nil, WireError(.internal, "\(error)")))
        }
    }

    /// The `id` of a SUBMIT body that failed validation, so the error reply can name the request.
    private static func salvageID(_ frame: Data) -> String? {
        ((try? JSONSerialization.jsonObject(with: frame)) as? [String: Any])?["id"] as? String
    }

    // MARK: Back end

    private func handleBackend(_ message: ZMQMessage) {
        let now = MonotonicClock.now()
        guard let identity = message.frames.first else { return }
        do {
            guard !message.isTruncated else { throw WireError(.tooLarge, "message of \(message.totalBytes) bytes in \(message.frameCount) frames") }
            let (command, payload) = try WireProtocol.parse(message.frames.dropFirst())
            switch command {
            case WireProtocol.ready:
                guard payload.count == 1 else { throw WireError(.badRequest, "READY takes one JSON payload frame, got \(payload.count)") }
                execute(core.workerReady(identity, try WireProtocol.decode(ReadyBody.self, from: payload[0], what: "READY body"), now: now))
            case WireProtocol.heartbeat:
                execute(core.workerHeartbeat(identity, now: now))
            case WireProtocol.result:
                guard let header = payload.first else { throw WireError(.badRequest, "RESULT without its JSON header frame") }
                let body = try WireProtocol.decode(WorkerResultBody.self, from: header, what: "RESULT header")
                let pngs = Array(payload.dropFirst())
                guard pngs.count == body.images.count else {
                    execute(core.workerFailed(identity, batchID: body.batchID, message: "malformed RESULT: \(body.images.count) images listed but \(pngs.count) PNG frames", now: now))
                    return
                }
                execute(core.workerResult(identity, body, pngs: pngs, now: now))
            case WireProtocol.failed:
                guard payload.count == 1 else { throw WireError(.badRequest, "FAILED takes one JSON payload frame, got \(payload.count)") }
                let body = try WireProtocol.decode(FailedBody.self, from: payload[0], what: "FAILED body")
                execute(core.workerFailed(identity, batchID: body.batchID, message: body.message, now: now))
            case WireProtocol.bye:
                execute(core.workerLeaving(identity, now: now))
            default:
                throw WireError(.unknownCommand, "unknown command '\(command)'; workers may send READY, HEARTBEAT, RESULT, FAILED or BYE")
            }
        } catch {
            let wire = error as? WireError ?? WireError(.internal, "\(error)")
            log("bad message from worker \(core.registry.workers[identity]?.name ?? "(unregistered)"): \(wire)")
            send(backend, [identity] + WireProtocol.frames(WireProtocol.error, [WireProtocol.encode(ErrorBody(id: nil, code: wire.code, message: wire.message))]))
            // A worker that cannot speak the protocol would hold its batch forever: fail the batch now.
            if let record = core.registry.workers[identity], let batch = record.batch {
                execute(core.workerFailed(identity, batchID: batch.id, message: "sent a malformed message: \(wire.message)", now: now))
            }
        }
    }

    // MARK: Sending

    private func execute(_ actions: [SchedulerAction]) {
        for action in actions {
            switch action {
            case let .replyResult(route, header, png):
                if !send(frontend, route.envelope + WireProtocol.frames(WireProtocol.result, [WireProtocol.encode(header), png])) {
                    metrics.unroutableReplies.increment()
                }
            case let .replyError(route, body):
                if !send(frontend, route.envelope + WireProtocol.frames(WireProtocol.error, [WireProtocol.encode(body)])) {
                    metrics.unroutableReplies.increment()
                }
            case let .dispatch(worker, body):
                if !send(backend, [worker] + WireProtocol.frames(WireProtocol.batch, [WireProtocol.encode(body)])) {
                    metrics.workerDeaths.increment()
                    execute(core.workerGone(worker, reason: "unreachable when sending batch \(body.batchID)",
                                            batchReachedWorker: false, now: MonotonicClock.now()))
                }
            case let .heartbeat(worker):
                if !send(backend, [worker] + WireProtocol.frames(WireProtocol.heartbeat)) {
                    // libzmq saw the connection close (the process died): no need to wait for missed heartbeats.
                    metrics.workerDeaths.increment()
                    execute(core.workerGone(worker, reason: "unreachable", now: MonotonicClock.now()))
                }
            case let .disconnect(worker, body):
                send(backend, [worker] + WireProtocol.frames(WireProtocol.disconnect, [WireProtocol.encode(body)]))
            case let .log(text):
                log(text)
            }
        }
    }

    /// Sends without blocking; false when the peer is gone or its queue is full.
    @discardableResult
    private func send(_ socket: ZMQSocket, _ frames: [Data]) -> Bool {
        do {
            return try socket.send(frames, dontWait: true)
        } catch let error as ZMQError where error.isHostUnreachable {
            return false
        } catch {
            log("send failed: \(error)")
            return false
        }
    }
}
