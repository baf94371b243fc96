"""Which part of the node handles each message: the node's one dispatch table.

Each entry names the node's own method or "part.method" of one of ``Node.PARTS``; the
node binds them once when it starts (one dict lookup a message, no ``elif`` chain), and a
test checks that every message a client may send has its handler.
"""

from __future__ import annotations

from rayjupyter.core import protocol as P

#: which method handles each message a client may send: the node's own, or
#: "part.method" of one of ``PARTS`` (bound once, in ``__init__``: one lookup a message)
CLIENT_MESSAGES: dict[type, str] = {
    P.Hello: "connections.on_hello",
    P.SubmitTask: "task_part.on_submit",
    P.PutObject: "object_table.on_put",
    P.RefOps: "object_table.on_ref_ops",
    P.PinOps: "object_table.on_pin_ops",
    P.Subscribe: "object_table.on_subscribe",
    P.TaskFinished: "task_part.on_task_finished",
    P.WorkerBlocked: "task_part.on_worker_blocked",
    P.ReturnLease: "task_part.on_return_lease",
    P.StopCluster: "on_stop",
    P.Heartbeat: "connections.on_heartbeat",
    P.Disconnect: "connections.on_disconnect",
    P.CancelTask: "task_part.on_cancel",
    P.CreateActor: "actor_part.on_create_actor",
    P.KillActor: "actor_part.on_kill_actor",
    P.ActorStarted: "actor_part.on_actor_started",
    P.ActorExiting: "actor_part.on_actor_exiting",
    P.ExitActor: "actor_part.on_exit_actor",  # from an actor's home: its handles all went
    P.ProvideObjects: "pulling.on_provide_objects",
    P.PullObject: "pulling.on_pull_object",
    P.PendingObjects: "pulling.on_pending_objects",  # (NodePromises)
    P.RegisterNode: "membership.on_register_node",
    P.NodeHeartbeat: "membership.on_node_heartbeat",
    P.ActorHomes: "forwarding.on_actor_homes",
    P.UploadPackage: "envs.on_upload_package",
    P.RegisterRuntimeEnv: "envs.on_register_runtime_env",
    P.GeneratorItem: "on_generator_item",
    P.GeneratorConsumed: "on_generator_consumed",
    **dict.fromkeys(P.QUERIES, "queries.on_query"),  # by type: node_queries.ANSWERS
    P.CreatePlacementGroup: "placement.on_create",
    P.RemovePlacementGroup: "placement.on_remove",
    P.QueryPlacementGroups: "placement.on_query",
    **dict.fromkeys(P.JOB_MESSAGES, "jobs.on_job_message"),  # the head's Jobs API
}

#: which method handles each message a peer node sends us on our link to it
PEER_MESSAGES: dict[type, str] = {
    P.Welcome: "membership.on_peer_welcome",
    P.ClusterView: "membership.on_cluster_view",
    P.ObjectsReady: "forwarding.on_peer_objects_ready",
    P.ContainedObjects: "forwarding.on_contained_objects",
    P.ActorGone: "forwarding.on_actor_gone",
    P.AttemptLost: "forwarding.on_attempt_lost",
    P.LogLines: "forwarding.on_peer_log_lines",
    P.ObjectChunk: "pulling.on_object_chunk",
    P.Reply: "placement.on_peer_reply",
}
