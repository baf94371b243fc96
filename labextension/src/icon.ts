import { LabIcon } from '@jupyterlab/ui-components';

/** Three linked nodes: a cluster. */
const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">
  <g class="jp-icon3" fill="#616161">
    <circle cx="12" cy="5" r="3"/>
    <circle cx="5" cy="18" r="3"/>
    <circle cx="19" cy="18" r="3"/>
    <path d="M11 7.5 6 15.5l1.7 1 5-8zm2 0-1.7 1 5 8 1.7-1zM7.5 17h9v2h-9z"/>
  </g>
</svg>`;

export const clusterIcon = new LabIcon({ name: 'rayjupyter:cluster', svgstr: svg });
