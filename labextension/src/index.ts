/**
 * rayjupyter's JupyterLab extension: the Clusters side panel, dashboard tabs, and a status
 * bar item with the task counts of the active notebook's cluster. Commands live in the
 * `rayjupyter:` namespace.
 */
import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';
import { INotebookTracker } from '@jupyterlab/notebook';
import { IStatusBar } from '@jupyterlab/statusbar';

import * as api from './api';
import { openDashboard } from './dashboard';
import { clusterIcon } from './icon';
import { ClusterInfo } from './models';
import { insertConnect } from './notebook';
import { ClustersPanel, PANEL_ID } from './panel';
import { ClusterStatusItem } from './statusbar';

export namespace CommandIDs {
  export const openPanel = 'rayjupyter:open-panel';
  export const startCluster = 'rayjupyter:start-cluster';
  export const insertConnect = 'rayjupyter:insert-connect';
  export const openDashboard = 'rayjupyter:open-dashboard';
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'rayjupyter:plugin',
  description: 'Clusters panel, dashboard tabs and status bar item for rayjupyter.',
  autoStart: true,
  optional: [ICommandPalette, ILayoutRestorer, INotebookTracker, IStatusBar],
  activate: (
    app: JupyterFrontEnd,
    palette: ICommandPalette | null,
    restorer: ILayoutRestorer | null,
    notebooks: INotebookTracker | null,
    statusBar: IStatusBar | null
  ) => {
    const panel = new ClustersPanel({
      // HOST:PORT only: the kernel finds the secret on this machine (the cluster's record,
      // or the one this server keeps for clusters added by address), so a saved and
      // shared notebook never carries it; a Ray cluster's ray://HOST:PORT holds no secret
      // (the kernel reads Ray's token where Ray's clients look)
      connect: cluster =>
        void app.commands.execute(CommandIDs.insertConnect, {
          address:
            cluster.engine === 'ray'
              ? (cluster.connect_address ?? cluster.address)
              : cluster.address
        }),
      openDashboard: (cluster, page) => openDashboard(app, cluster, page)
    });
    panel.title.icon = clusterIcon;
    app.shell.add(panel, 'left', { rank: 900 });
    restorer?.add(panel, PANEL_ID);
    addCommands(app, panel, notebooks);
    for (const command of [CommandIDs.openPanel, CommandIDs.startCluster]) {
      palette?.addItem({ command, category: 'Rayjupyter' });
    }
    if (statusBar && notebooks) {
      const item = new ClusterStatusItem(notebooks, () =>
        app.shell.activateById(PANEL_ID)
      );
      statusBar.registerStatusItem('rayjupyter:status', {
        item,
        align: 'left',
        rank: 100,
        isActive: () => true
      });
    }
  }
};

function addCommands(
  app: JupyterFrontEnd,
  panel: ClustersPanel,
  notebooks: INotebookTracker | null
): void {
  app.commands.addCommand(CommandIDs.openPanel, {
    label: 'Open the Clusters Panel',
    icon: clusterIcon,
    execute: () => app.shell.activateById(panel.id)
  });
  app.commands.addCommand(CommandIDs.startCluster, {
    label: 'Start a Local Cluster',
    execute: async () => {
      app.shell.activateById(panel.id);
      await panel.startCluster();
    }
  });
  app.commands.addCommand(CommandIDs.insertConnect, {
    label: 'Insert %ray_connect into the Notebook',
    execute: args => {
      const address = String(args.address ?? '');
      if (!notebooks || !insertConnect(notebooks, address)) {
        panel.showMessage('Open a notebook first: the %ray_connect line goes into it.', 'error');
      }
    }
  });
  app.commands.addCommand(CommandIDs.openDashboard, {
    label: args => `Open Dashboard ${String(args.page ?? 'overview')}`,
    execute: async args => {
      const id = String(args.id ?? '');
      const path = String(args.page ?? 'overview');
      const { clusters, dashboard_pages, ray_dashboard_pages } = await api.listClusters();
      const cluster = clusters.find((c: ClusterInfo) => c.id === id);
      if (!cluster) {
        panel.showMessage(`No cluster ${id}: refresh the list.`, 'error');
        return;
      }
      const pages = cluster.engine === 'ray' ? ray_dashboard_pages : dashboard_pages;
      const page = pages.find(p => p.path === path) ?? { path, title: path };
      openDashboard(app, cluster, page);
    }
  });
}

export default plugin;
