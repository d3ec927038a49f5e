/**
 * Jest in ESM mode with @swc/jest; type-checking happens in `pretest` (tsc).
 * Two projects: `unit` (pure modules and in-process components under
 * services/ and cli/, seconds: `npm run test:unit`) and `process` (real
 * master and shard processes under test/, built from dist/). `npm test` runs both.
 */
const base = {
  testEnvironment: 'node',
  extensionsToTreatAsEsm: ['.ts', '.tsx'],
  moduleNameMapper: { '^(\\.{1,2}/.*)\\.js$': '$1' },
  transform: {
    '^.+\\.(t|j)sx?$': [
      '@swc/jest',
      {
        jsc: {
          parser: { syntax: 'typescript', tsx: true },
          transform: { react: { runtime: 'automatic' } },
          target: 'es2022',
        },
        module: { type: 'es6' },
      },
    ],
  },
  testPathIgnorePatterns: ['/node_modules/', '/dist/'],
};

export default {
  testTimeout: 60000,
  projects: [
    {
      ...base,
      displayName: 'unit',
      testMatch: ['<rootDir>/services/**/*.test.ts', '<rootDir>/services/**/*.test.tsx', '<rootDir>/cli/**/*.test.ts', '<rootDir>/cli/**/*.test.tsx'],
    },
    { ...base, displayName: 'process', testMatch: ['<rootDir>/test/**/*.test.ts'] },
  ],
};
