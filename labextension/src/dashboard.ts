/** Dashboard pages in JupyterLab tabs: an iframe on the server's proxy of the dashboard. */
import { MainAreaWidget, IFrame } from '@jupyterlab/apputils';
import { JupyterFrontEnd } from '@jupyterlab/application';

import { ClusterInfo, DashboardPage } from './models';

/** How many pages get a button of their own; the rest are in a menu. */
export const MAIN_PAGES = 3;

const open = new Map<string, MainAreaWidget<IFrame>>();

/** Open (or bring forward) a dashboard page of a cluster as a main-area tab. */
export function openDashboard(
  app: JupyterFrontEnd,
  cluster: Pick<ClusterInfo, 'id' | 'address' | 'dashboard_url'>,
  page: DashboardPage
): MainAreaWidget<IFrame> {
  // Ray's pages are URL fragments (#/overview): keep the id to word characters
  const id = `rayjupyter-dashboard-${cluster.id}-${page.path.replace(/[^\w-]+/g, '_')}`;
  const existing = open.get(id);
  if (existing && !existing.isDisposed) {
    app.shell.activateById(id);
    return existing;
  }
  const frame = new IFrame({
    sandbox: ['allow-scripts', 'allow-same-origin', 'allow-forms', 'allow-popups'],
    referrerPolicy: 'same-origin'
  });
  frame.url = cluster.dashboard_url + page.path;
  const widget = new MainAreaWidget({ content: frame });
  widget.id = id;
  widget.addClass('rj-Dashboard');
  widget.node.dataset.clusterId = cluster.id;
  widget.node.dataset.page = page.path;
  widget.title.label = `${page.title} · ${cluster.address}`;
  widget.title.caption = `rayjupyter dashboard: ${page.title} of the cluster at ${cluster.address}`;
  widget.title.closable = true;
  widget.disposed.connect(() => open.delete(id));
  open.set(id, widget);
  app.shell.add(widget, 'main');
  app.shell.activateById(id);
  return widget;
}
