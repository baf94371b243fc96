// Generated from rayjupyter.server.models, rayjupyter.core.read_models by `python -m rayjupyter.server.typescript`.
// Do not edit: change the Python models and regenerate (a test checks this file).

/** how the server knows a cluster: started from the panel, by a kernel of this server, by another process on this machine (a script, another Jupyter, ``rj.init``), or added by address */
export type ClusterOrigin = "panel" | "kernel" | "process" | "remote";

/** what DELETE clusters/<id> does: stop a cluster this server started, forget a remote one, or nothing (its owner stops it; stop_note says how) */
export type StopAction = "stop" | "forget" | "none";

/** the runtime a cluster runs: rayjupyter's own, or Ray (read through Ray's dashboard HTTP API) */
export type ClusterEngine = "rayjupyter" | "ray";

/** how a kernel's cluster was found: the kernel started it, or is connected to it */
export type KernelMatch = "owner" | "connected";

/** One node of a cluster, as the head's node table has it. */
export interface ClusterNode {
  /** hex */
  node_id: string;
  /** host:port of the node daemon (Ray: the node's IP) */
  address: string;
  alive: boolean;
  /** total resources of the node: CPU, GPU, custom ones */
  resources: { [key: string]: number };
  /** unix seconds */
  started: number;
}

/** A live snapshot of a cluster, read from its head. */
export interface ClusterStatus {
  nodes: ClusterNode[];
  nodes_alive: number;
  /** CPU slots of the live nodes */
  cpu_total: number;
  /** CPU slots held by running tasks and actors */
  cpu_used: number;
  gpu_total: number;
  gpu_used: number;
  /** machine CPU use of the head's machine (Ray: mean of live nodes), 0..100 */
  cpu_percent: number;
  /** bytes in use on the head's machine (Ray: sum over live nodes) */
  memory_used: number;
  /** bytes of memory of the head's machine (Ray: sum over live nodes) */
  memory_total: number;
  /** bytes of the object store in shared memory */
  store_used: number;
  /** bytes the object store may use */
  store_capacity: number;
  /** live tasks by state (Ray's: PENDING_ARGS_AVAIL, ..., RUNNING) */
  tasks: { [key: string]: number };
  tasks_running: number;
  /** waiting for their arguments or for a worker */
  tasks_pending: number;
  /** actors by state */
  actors: { [key: string]: number };
  /** pooled worker processes */
  workers: number;
  /** connected drivers (kernels, scripts) */
  drivers: number;
  /** unix seconds when the head answered */
  time: number;
}

/** A cluster this Jupyter server knows, with its status when it could be read. */
export interface ClusterInfo {
  /** the cluster's session name; used in URLs */
  id: string;
  engine: ClusterEngine;
  /** host:port (Ray: the dashboard's http://HOST:PORT) */
  address: string;
  /** rayjupyter://SECRET@HOST:PORT or ray://HOST:PORT; null: no code */
  connect_address: string | null;
  origin: ClusterOrigin;
  /** runs on this machine */
  local: boolean;
  /** the process that started it and whose exit stops it; 0 if none */
  owner_pid: number;
  /** the kernel of this server that started it, if one did */
  kernel_id: string | null;
  /** unix seconds; null when unknown (remote clusters) */
  started: number | null;
  stop_action: StopAction;
  /** what DELETE does, or why it is refused and how to stop it */
  stop_note: string;
  /** the proxied dashboard's root, an absolute path on this server */
  dashboard_url: string;
  /** null when the cluster did not answer */
  status: ClusterStatus | null;
  /** why status is null */
  error: string | null;
}

/** A page of the dashboard, at ``dashboard_url + path``. */
export interface DashboardPage {
  path: string;
  title: string;
}

/** GET clusters: every cluster this server knows, and the pages of their dashboards. */
export interface ClusterList {
  clusters: ClusterInfo[];
  /** pages of rayjupyter's dashboard */
  dashboard_pages: DashboardPage[];
  /** pages of Ray's dashboard (its own routes) */
  ray_dashboard_pages: DashboardPage[];
}

/** POST clusters with num_cpus: start a local cluster owned by this server. */
export interface StartClusterRequest {
  /** CPUs of the new cluster; default: this machine's CPU count */
  num_cpus?: number;
}

/** POST clusters with address: remember a running cluster by its address, one of ours (rayjupyter://SECRET@HOST:PORT) or Ray's (ray://HOST:10001, or http://HOST:8265). */
export interface AddClusterRequest {
  address: string;
  /** ray://HOST:PORT: a Ray Client server not on HOST:10001 */
  ray_client_address?: string;
}

/** GET kernels/<id>/cluster: the cluster a kernel uses, for the status bar. */
export interface KernelCluster {
  kernel_id: string;
  /** the kernel's process; null when it is not a local process */
  pid: number | null;
  /** null when the kernel uses no cluster */
  cluster: ClusterInfo | null;
  /** how the cluster was found */
  match: KernelMatch | null;
}

/** DELETE clusters/<id>: what was done. */
export interface StopReply {
  message: string;
}

/** Every error body (any 4xx/5xx): one line that names the fix; never a traceback. */
export interface ErrorReply {
  message: string;
  /** the HTTP reason phrase */
  reason: string | null;
}

/** Ray's names for the states a task goes through (those this engine reaches): waiting for its arguments, waiting for a worker (also when sent ahead to a busy one), running, done. */
export type TaskStateName = "PENDING_ARGS_AVAIL" | "PENDING_NODE_ASSIGNMENT" | "RUNNING" | "FINISHED" | "FAILED";

/** Ray's names for an actor's states */
export type ActorStateName = "PENDING_CREATION" | "RESTARTING" | "ALIVE" | "DEAD";

/** the kinds of rows ``ListState`` answers with */
export type StateKind = "tasks" | "actors" | "objects" | "nodes" | "jobs" | "workers";

/** Ray's job states (``JobStatus``): a submitted job waits for its process, runs, then ends stopped (``stop_job``), succeeded (exit code 0) or failed */
export type JobStatusName = "PENDING" | "RUNNING" | "STOPPED" | "SUCCEEDED" | "FAILED";

/** a job submitted through the Jobs API, or a driver that connected by itself */
export type JobTypeName = "SUBMISSION" | "DRIVER";

/** One node, in Ray's ``ray.nodes()`` names. */
export interface NodeRow {
  /** hex */
  NodeID: string;
  Alive: boolean;
  /** host */
  NodeManagerAddress: string;
  NodeManagerPort: number;
  /** CPU, GPU and custom: counts; object_store_memory: bytes */
  Resources: { [key: string]: number };
  /** free now (peers: as of their last heartbeat), same units */
  Available: { [key: string]: number };
  /** unix seconds */
  StartTime: number;
}

/** The node's shared-memory object store. */
export interface StoreStats {
  /** bytes */
  capacity: number;
  used_bytes: number;
  spilled_bytes: number;
  num_objects: number;
  num_in_memory: number;
  num_spilled: number;
  num_pinned: number;
  /** objects spilled to disk since start */
  spill_count: number;
  /** objects read back from disk since start */
  restore_count: number;
  /** the object files' folder: on disk if /dev/shm was too small */
  directory: string;
  /** why that directory and size; "" when the store simply fits /dev/shm */
  note: string;
}

/** A machine's CPU and memory, sampled when the status was taken: the head's (psutil) on our runtime; on Ray, each node's metrics agent, and the cluster's mean CPU and summed memory. */
export interface MachineUsage {
  /** 0-100, all cores together */
  cpu_percent: number;
  /** bytes */
  memory_total: number;
  /** bytes */
  memory_used: number;
  /** unix seconds */
  time: number;
}

/** A snapshot of the whole cluster as the node sees it (``GetStatus``). */
export interface NodeStatus {
  nodes: NodeRow[];
  /** resources of the live nodes (object_store_memory in bytes) */
  total: { [key: string]: number };
  /** what is free now */
  available: { [key: string]: number };
  /** live tasks by state (TaskStateName), actors' __init__ left out */
  tasks: { [key: string]: number };
  /** actors by state (ActorStateName) */
  actors: { [key: string]: number };
  /** pool worker processes (actors' processes not counted) */
  workers: number;
  /** connected drivers (notebooks, scripts) */
  drivers: number;
  /** pids of the drivers attached from the head's own machine */
  driver_pids: number[];
  store: StoreStats;
  machine: MachineUsage;
  /** node id (hex) -> its machine */
  node_machines: { [key: string]: MachineUsage };
}

/** One task or actor call, in Ray's ``list_tasks`` names. */
export interface TaskRow {
  /** hex */
  task_id: string;
  name: string;
  func_or_class_name: string;
  state: TaskStateName;
  /** hex: the submitting driver's job */
  job_id: string;
  /** hex, for actor calls */
  actor_id: string | null;
  type: "NORMAL_TASK" | "ACTOR_TASK";
  /** hex */
  node_id: string;
  /** once started */
  worker_pid: number | null;
  /** 0 for the first try */
  attempt_number: number;
  /** unix seconds */
  submitted_at: number;
  /** unix seconds, once started */
  start_time: number | null;
  /** unix seconds, once finished or failed */
  end_time: number | null;
  /** Ray's name of why it failed, once failed */
  error_type: string | null;
  /** Ray's names of the three times above, unix ms */
  creation_time_ms: number | null;
  start_time_ms: number | null;
  end_time_ms: number | null;
}

/** One actor, in Ray's ``list_actors`` names. */
export interface ActorRow {
  /** hex */
  actor_id: string;
  class_name: string;
  state: ActorStateName;
  /** "" for an unnamed actor */
  name: string;
  ray_namespace: string;
  /** hex */
  job_id: string;
  /** its process, while it has one */
  pid: number | null;
  /** hex */
  node_id: string;
  num_restarts: number;
  is_detached: boolean;
  death_cause: string | null;
  /** why a placeable actor waits (no worker process free) */
  pending_reason: string | null;
}

/** One object the node tracks. */
export interface ObjectRow {
  /** hex */
  object_id: string;
  /** bytes */
  object_size: number;
  /** holds: refs in processes, tasks using it, objects containing it */
  reference_count: number;
  ready: boolean;
  is_error: boolean;
  where: "shared memory" | "inline";
  spilled: boolean;
}

/** One job in Ray's ``JobDetails`` names: submitted through the Jobs API (its entrypoint runs on the head) or a driver that connected by itself. */
export interface JobRow {
  type: JobTypeName;
  /** hex of the driver's job; a submission's, once its driver connected */
  job_id: string | null;
  /** the Jobs API's id ("raysubmit_..."); None for a plain driver */
  submission_id: string | null;
  status: JobStatusName;
  /** the shell command of a submission ("" for a plain driver) */
  entrypoint: string;
  /** what happened, in words */
  message: string | null;
  /** why it failed, once failed */
  error_type: string | null;
  /** unix ms */
  start_time: number | null;
  /** unix ms, once ended */
  end_time: number | null;
  metadata: { [key: string]: string };
  /** as submitted */
  runtime_env: { [key: string]: unknown };
  /** the entrypoint's exit code, once ended */
  driver_exit_code: number | null;
  /** hex of the node it runs on */
  driver_node_id: string | null;
  /** the driver's (or the entrypoint's) process id */
  driver_pid: number | null;
}

/** One process of a node: a pool or actor worker, or a driver, in Ray's ``list_workers`` names. */
export interface WorkerRow {
  /** hex */
  worker_id: string;
  is_alive: boolean;
  worker_type: "WORKER" | "DRIVER";
  exit_type: string | null;
  /** hex */
  node_id: string;
  ip: string;
  pid: number;
  /** hex, for an actor's process */
  actor_id: string | null;
}

/** One placement group, in Ray's ``list_placement_groups`` names. */
export interface PlacementGroupRow {
  /** hex */
  placement_group_id: string;
  name: string;
  /** hex ("" when the head does not know it) */
  creator_job_id: string;
  state: "PENDING" | "CREATED" | "REMOVED" | "RESCHEDULING";
  strategy: string;
  is_detached: boolean;
  /** bundle_index, node_id, unit_resources */
  bundles: { [key: string]: unknown }[];
}

/** A worker process's recent output (``GetWorkerLogs``). */
export interface WorkerLogLines {
  pid: number;
  /** what it ran last (a task's name, or an actor's class) */
  name: string;
  /** (unix seconds, 1 stdout or 2 stderr, text), oldest first */
  lines: [number, number, string][];
}

/** A live named actor (``ListNamedActors``). */
export interface NamedActor {
  name: string;
  namespace: string;
}
