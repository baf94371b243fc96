// Generated from rayjupyter.server.models by `python -m rayjupyter.server.typescript`.
// Do not edit: change the Python models and regenerate (a test checks this file).

/** how the server knows a cluster: started from the panel, by a kernel of this server, by another process on this machine (a script, another Jupyter, ``rj.init``), or added by address */
export type ClusterOrigin = "panel" | "kernel" | "process" | "remote";

/** what DELETE clusters/<id> does: stop a cluster this server started, forget a remote one, or nothing (its owner stops it; stop_note says how) */
export type StopAction = "stop" | "forget" | "none";

/** how a kernel's cluster was found: the kernel started it, or is connected to it */
export type KernelMatch = "owner" | "connected";

/** One node of a cluster, as the head's node table has it. */
export interface NodeStatus {
  /** hex */
  node_id: string;
  /** host:port of the node daemon */
  address: string;
  alive: boolean;
  /** total resources of the node: CPU, GPU, custom ones */
  resources: { [key: string]: number };
  /** unix seconds */
  started: number;
}

/** A live snapshot of a cluster, read from its head. */
export interface ClusterStatus {
  nodes: NodeStatus[];
  nodes_alive: number;
  /** CPU slots of the live nodes */
  cpu_total: number;
  /** CPU slots held by running tasks and actors */
  cpu_used: number;
  gpu_total: number;
  gpu_used: number;
  /** machine CPU use of the head's machine, 0..100 */
  cpu_percent: number;
  /** bytes in use on the head's machine */
  memory_used: number;
  /** bytes of memory of the head's machine */
  memory_total: number;
  /** bytes of the object store in shared memory */
  store_used: number;
  /** bytes the object store may use */
  store_capacity: number;
  /** live tasks by state (WAITING, READY, RUNNING) */
  tasks: { [key: string]: number };
  tasks_running: number;
  /** waiting for dependencies or for a worker */
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
  /** host:port */
  address: string;
  /** rayjupyter://SECRET@HOST:PORT, what %ray_connect takes */
  connect_address: string;
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
  dashboard_pages: DashboardPage[];
}

/** POST clusters with num_cpus: start a local cluster owned by this server. */
export interface StartClusterRequest {
  /** CPUs of the new cluster; default: this machine's CPU count */
  num_cpus?: number;
}

/** POST clusters with address: remember a running cluster by its address. */
export interface AddClusterRequest {
  /** rayjupyter://SECRET@HOST:PORT */
  address: string;
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
