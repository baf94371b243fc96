/**
 * Calls to the server extension's REST API (rayjupyter/server/handlers.py), with Jupyter's
 * auth (token, cookie, XSRF) from ServerConnection. A failed call throws an Error whose
 * message is the server's one-line ErrorReply.message.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

import {
  ClusterInfo,
  ClusterList,
  ErrorReply,
  KernelCluster,
  StopReply
} from './models';

const settings = ServerConnection.makeSettings();

/** An error from the API, carrying the HTTP status. */
export class APIError extends Error {
  constructor(
    message: string,
    readonly status: number
  ) {
    super(message);
  }
}

async function request<T>(path: string, init: RequestInit = {}): Promise<T> {
  const url = URLExt.join(settings.baseUrl, 'rayjupyter', 'api', path);
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, init, settings);
  } catch (error) {
    throw new APIError(`The Jupyter server did not answer: ${error}`, 0);
  }
  const text = await response.text();
  let body: unknown = null;
  if (text) {
    try {
      body = JSON.parse(text);
    } catch {
      body = null;
    }
  }
  if (!response.ok) {
    const reply = body as ErrorReply | null;
    const message =
      reply && typeof reply.message === 'string'
        ? reply.message
        : `${response.status} ${response.statusText}`;
    throw new APIError(message, response.status);
  }
  return body as T;
}

function json(method: string, value: unknown): RequestInit {
  return { method, body: JSON.stringify(value) };
}

export function listClusters(): Promise<ClusterList> {
  return request<ClusterList>('clusters');
}

export function startCluster(numCpus?: number): Promise<ClusterInfo> {
  return request<ClusterInfo>(
    'clusters',
    json('POST', numCpus === undefined ? {} : { num_cpus: numCpus })
  );
}

export function addCluster(address: string): Promise<ClusterInfo> {
  return request<ClusterInfo>('clusters', json('POST', { address }));
}

export function stopCluster(id: string): Promise<StopReply> {
  return request<StopReply>(`clusters/${encodeURIComponent(id)}`, {
    method: 'DELETE'
  });
}

export function kernelCluster(kernelId: string): Promise<KernelCluster> {
  return request<KernelCluster>(
    `kernels/${encodeURIComponent(kernelId)}/cluster`
  );
}
